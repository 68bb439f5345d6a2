//! The model: the words every other module speaks, as data and pure functions. It imports
//! nothing of the crate outside itself.
//!
//! - [`metric`]: metric families ([`metric::MetricDef`]), groups, profiles, the selection;
//! - [`exposition`]: the sample-line writer the encoders share and the slot layout;
//! - [`text`]: the two exposition formats;
//! - [`error`], [`label()`]: poll errors, safe label values.

pub mod error;
pub mod exposition;
pub mod label;
pub mod metric;
pub mod text;

pub use error::{ErrorKind, Monitor, PollError};
pub use label::label;
