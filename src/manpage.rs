//! The man pages `debian/vmbridge.1` and `debian/vmbridge-check.1`: NAME, SYNOPSIS, OPTIONS and
//! SUBCOMMANDS are rendered by `clap_mangen` from the [`Cli`](crate::cli::Cli) definition, so a
//! flag cannot be added without its man page entry; the prose (DESCRIPTION, FILES, ENVIRONMENT,
//! EXIT STATUS, SEE ALSO) is hand-written roff in `debian/man/*.roff`, put between the rendered
//! sections. Test-only: the pages are checked-in generated files (see [`crate::schema`]), and
//! the `.deb` ships the checked-in copies.

use clap::CommandFactory;
use clap_mangen::Man;

/// What the title line says: the version without the git revision `--version` adds, so the
/// page changes only when the interface or the prose does.
const SOURCE: &str = concat!("vmbridge ", env!("CARGO_PKG_VERSION"));

/// The date on the title line: that of the newest `debian/changelog` entry (the release the page
/// describes), as YYYY-MM-DD. clap_mangen needs one: with an empty date, roff drops the argument
/// and the title line's fields shift.
fn release_date() -> String {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let changelog = include_str!("../debian/changelog");
    // " -- Name <mail>  Wed, 25 Nov 2026 15:20:58 +0000"
    let trailer = changelog.lines().find(|l| l.starts_with(" -- ")).expect("debian/changelog has a trailer line");
    let date = trailer.rsplit_once(">  ").expect("trailer: maintainer, two spaces, date").1;
    let f: Vec<&str> = date.split_whitespace().collect();
    let month = MONTHS.iter().position(|m| f.get(2) == Some(m)).expect("RFC 2822 month") + 1;
    let day: u32 = f.get(1).and_then(|d| d.parse().ok()).expect("RFC 2822 day");
    format!("{}-{month:02}-{day:02}", f.get(3).expect("RFC 2822 year"))
}

fn page(man: &Man, parts: &[Part<'_>]) -> String {
    let mut out = Vec::new();
    for part in parts {
        let rendered = match part {
            Part::Title => man.render_title(&mut out),
            Part::Name => man.render_name_section(&mut out),
            Part::Synopsis => man.render_synopsis_section(&mut out),
            Part::Description => man.render_description_section(&mut out),
            Part::Options => man.render_options_section(&mut out),
            Part::Subcommands => man.render_subcommands_section(&mut out),
            Part::Roff(text) => {
                out.extend_from_slice(text.as_bytes());
                Ok(())
            }
        };
        // Writing into a Vec cannot fail.
        rendered.expect("render into memory");
    }
    String::from_utf8(out).expect("clap_mangen writes UTF-8 from UTF-8 help texts")
}

enum Part<'a> {
    Title,
    Name,
    Synopsis,
    Description,
    Options,
    Subcommands,
    Roff(&'a str),
}

/// Both pages: (path relative to the crate root, content).
pub fn pages() -> Vec<(&'static str, String)> {
    // As clap_mangen's own generate_to: no `help` subcommand in the pages.
    let mut cmd = crate::cli::Cli::command().disable_help_subcommand(true);
    cmd.build();
    let check = cmd.find_subcommand("check").expect("the check subcommand").clone();
    let man = |c: clap::Command| {
        let title = c.get_display_name().unwrap_or_else(|| c.get_name()).to_uppercase();
        Man::new(c).title(title).date(release_date()).source(SOURCE).manual("User Commands")
    };
    let main = page(
        &man(cmd.clone()),
        &[
            Part::Title,
            Part::Name,
            Part::Synopsis,
            Part::Roff(include_str!("../debian/man/vmbridge.description.roff")),
            Part::Options,
            Part::Subcommands,
            Part::Roff(include_str!("../debian/man/vmbridge.tail.roff")),
        ],
    );
    let check = page(
        &man(check),
        &[
            Part::Title,
            Part::Name,
            Part::Synopsis,
            Part::Description,
            Part::Options,
            Part::Roff(include_str!("../debian/man/vmbridge-check.tail.roff")),
        ],
    );
    vec![("debian/vmbridge.1", main), ("debian/vmbridge-check.1", check)]
}
