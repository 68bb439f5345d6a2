//! The macro behind the registry in `source/mod.rs`: from one line per source it declares the
//! source's module and makes [`SourceKind`](super::SourceKind), its label values and exposition
//! order, [`SourceSample`](super::SourceSample) and [`visit`](super::visit), the one exhaustive
//! `match` over the sources.

/// See the invocation in `source/mod.rs`.
macro_rules! sources {
    ($(
        $(#[$cfg:meta])*
        $variant:ident = $module:ident :: $ty:ident, $sample:ty, $position:literal, $label:literal,
            $kind_doc:literal, $sample_doc:literal;
    )*) => {
        $( $(#[$cfg])* pub mod $module; )*

        // A source registered under a condition (a test source) stays out of the JSON Schemas.
        /// The sources vmbridge polls. Adding one is a variant here plus its module; the compiler's
        /// exhaustive matches find the rest.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, schemars::JsonSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum SourceKind {
            $( $(#[$cfg] #[schemars(skip)])* #[doc = $kind_doc] $variant, )*
        }

        /// Every registered source with its position in the exposition.
        const REGISTERED: &[(SourceKind, u8)] = &[ $( $(#[$cfg])* (SourceKind::$variant, $position), )* ];

        impl SourceKind {
            /// Every source, in the order their families are exposed.
            pub const ALL: [SourceKind; REGISTERED.len()] = $crate::source::registry::by_position(REGISTERED);

            /// The `source` label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $(#[$cfg])* SourceKind::$variant => $label, )*
                }
            }

            /// Whether it is registered only under a condition (a test source): its families
            /// export, but stay out of the documentation.
            pub fn conditional(self) -> bool {
                match self {
                    $( $(#[$cfg])* SourceKind::$variant => $crate::source::registry::has_attributes!($(#[$cfg])*), )*
                }
            }
        }

        /// The last good data of one source for one VM. Held behind an `Arc` in the store, so the
        /// size difference between variants costs nothing per scrape.
        #[allow(clippy::large_enum_variant)]
        #[derive(Debug, Clone, PartialEq, serde::Serialize, schemars::JsonSchema)]
        #[serde(tag = "source", rename_all = "snake_case")]
        pub enum SourceSample {
            $( $(#[$cfg] #[schemars(skip)])* #[doc = $sample_doc] $variant($sample), )*
        }

        /// Calls `visitor` with `kind`'s [`api::Source`] type: the one exhaustive `match` over
        /// the sources.
        pub fn visit<V: api::Visit>(kind: SourceKind, visitor: &mut V) {
            match kind {
                $( $(#[$cfg])* SourceKind::$variant => visitor.visit::<$module::$ty>(), )*
            }
        }
    };
}
pub(crate) use sources;

/// `true` when given any attribute.
macro_rules! has_attributes {
    () => {
        false
    };
    ($($attribute:tt)+) => {
        true
    };
}
pub(crate) use has_attributes;

/// The kinds of `registered`, ordered by their positions (each position once).
pub(crate) const fn by_position<const N: usize>(registered: &[(super::SourceKind, u8)]) -> [super::SourceKind; N] {
    let mut out = [registered[0].0; N];
    let mut placed = 0;
    let mut position = 0u8;
    while placed < N {
        let mut i = 0;
        while i < registered.len() {
            if registered[i].1 == position {
                out[placed] = registered[i].0;
                placed += 1;
            }
            i += 1;
        }
        position += 1;
    }
    out
}
