//! For the section tests: parse a TOML text and compare its error as `LINE:COLUMN: reason`.

use super::{parse, Config, ConfigError};
use std::path::{Path, PathBuf};

/// One route on a memory broker, for texts that test other sections.
pub(super) const ROUTE: &str =
    "[brokers.m]\ntype = \"memory\"\n[[routes]]\npath = \"/a\"\nbroker = \"m\"\ntopic = \"a\"\n";

/// The folder relative paths in a test text are read from: the repository's test fixtures (JWT
/// keys), so key files need no set-up, and a name not among them is a missing file.
pub(super) fn base() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Parses `text` as the file `F` in [`base`].
pub(super) fn parse_text(text: &str) -> Result<Config, ConfigError> {
    parse("F", text, &base())
}

/// Asserts that each `(text, expected)` is refused with an error that starts with `expected`, written
/// `LINE:COLUMN: reason`.
pub(super) fn assert_refused(cases: &[(impl AsRef<str>, impl AsRef<str>)]) {
    for (text, expected) in cases {
        let (text, expected) = (text.as_ref(), expected.as_ref());
        match parse_text(text) {
            Ok(_) => panic!("accepted, expected {expected:?}:\n{text}"),
            Err(e) => {
                let got = format!("{}:{}: {}", e.line, e.column, e.message);
                assert!(
                    got.starts_with(expected),
                    "expected {expected:?}, got {got:?} for:\n{text}"
                );
            }
        }
    }
}

/// Asserts that each text is a valid configuration.
pub(super) fn assert_accepted(texts: &[impl AsRef<str>]) {
    for text in texts {
        let text = text.as_ref();
        if let Err(e) = parse_text(text) {
            panic!("refused: {e}\n{text}");
        }
    }
}
