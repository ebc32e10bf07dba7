//! `[metering]` (SPEC §9), validated into [`Metering`]: where usage
//! records go and how often they are synced; and the key name reserved for
//! streams without a key.
//!
//! Owns the section's checks and limits. Never opens or writes the usage
//! file (the `metering` subsystem does, with these settings) and never
//! imports crate code.

use super::error::{ConfigError, find_span};
use super::keys::Key;
use super::raw::RawMetering;

/// `[metering]` (SPEC §9): usage records appended to `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metering {
    pub path: std::path::PathBuf,
    /// Seconds between two `fdatasync`s of the file.
    pub flush_s: u32,
}

/// Longest `flush_s`.
pub const MAX_FLUSH_S: u32 = 3600;
/// The key name usage records give streams without a key (`auth.required =
/// false`); no configured key may take it while metering is on.
pub const ANONYMOUS_KEY: &str = "anonymous";

/// `[metering]`: a path and `flush_s` 1..MAX_FLUSH_S; with optional keys,
/// no key may be named [`ANONYMOUS_KEY`].
pub(super) fn validate(
    src: &str,
    raw: Option<RawMetering>,
    keys: &[Key],
    auth_required: bool,
) -> Result<Option<Metering>, ConfigError> {
    let Some(m) = raw else {
        return Ok(None);
    };
    if m.path.get_ref().trim().is_empty() {
        return Err(ConfigError::at(
            src,
            Some(m.path.span()),
            "metering.path must name a file",
        ));
    }
    if !(1..=MAX_FLUSH_S).contains(m.flush_s.get_ref()) {
        return Err(ConfigError::at(
            src,
            Some(m.flush_s.span()).filter(|s| !s.is_empty()),
            format!("metering.flush_s must be 1..{MAX_FLUSH_S}"),
        ));
    }
    if !auth_required && keys.iter().any(|k| k.name == ANONYMOUS_KEY) {
        return Err(ConfigError::at(
            src,
            find_span(src, &format!("\"{ANONYMOUS_KEY}\"")),
            format!(
                "key name '{ANONYMOUS_KEY}' is reserved: usage records name streams \
                 without a key so (auth.required = false)"
            ),
        ));
    }
    Ok(Some(Metering {
        path: m.path.into_inner().into(),
        flush_s: m.flush_s.into_inner(),
    }))
}

#[cfg(test)]
mod tests {
    use super::super::Settings;

    #[test]
    fn metering_section() {
        let s = Settings::from_toml("[metering]\npath = \"/tmp/u.jsonl\"\n").unwrap();
        let m = s.metering.unwrap();
        assert_eq!(m.path, std::path::PathBuf::from("/tmp/u.jsonl"));
        assert_eq!(m.flush_s, 10);
        assert!(Settings::from_toml("").unwrap().metering.is_none());
        let e = Settings::from_toml("[metering]\npath = \"/tmp/u\"\nflush_s = 0\n").unwrap_err();
        assert_eq!((e.line, e.column), (3, 11), "{e}");
        let e = Settings::from_toml("[metering]\npath = \" \"\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        let e = Settings::from_toml("[metering]\nflush_s = 1\n").unwrap_err();
        assert!(e.message.contains("path"), "{e}");
        let e = Settings::from_toml("[metering]\npath = \"/tmp/u\"\nbogus = 1\n").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        // Streams without a key are metered as "anonymous": no key may be.
        let anon = "[auth]\nrequired = false\nanonymous_tier = \"scale\"\n\
                    [[keys]]\nname = \"anonymous\"\nkey = \"k\"\ntier = \"scale\"\n";
        assert!(Settings::from_toml(anon).is_ok());
        let e = Settings::from_toml(&format!("{anon}[metering]\npath = \"/tmp/u\"\n")).unwrap_err();
        assert_eq!(e.line, 5, "{e}");
        assert!(e.message.contains("reserved"), "{e}");
    }
}
