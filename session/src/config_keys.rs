//! Which section of a TOML config file a misplaced key belongs in.
//!
//! Both config files (`bsmtp-ssh.conf`, `rsmtp.conf`) are read with serde's
//! `deny_unknown_fields`, so a typo is an error. But TOML puts every key
//! after a `[peer.NAME]` line into that section, and an admin who appends
//! `spool_directory = ...` at the end of the file, or writes a peer's
//! `host = ...` above the first section, was told only "unknown field": true
//! of the section the key landed in, and no help. [`explain`] adds which
//! section the key is one of, and why it is read as being elsewhere.
//!
//! The keys of each section come from the config struct itself
//! ([`fields_of`]: the list its derived `Deserialize` hands to serde), so
//! they cannot drift from the code.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// One kind of section of a config file: how to name it to an admin, and
/// its keys.
#[derive(Clone, Copy, Debug)]
pub struct Section {
    /// Where keys of this kind go, as said to the admin, e.g. "at the top
    /// of the file, above the first [peer.NAME] line".
    pub place: &'static str,
    /// Its keys ([`fields_of`] the struct).
    pub keys: &'static [&'static str],
}

/// The field names of `T` as its derived `Deserialize` lists them: the
/// keys a `deny_unknown_fields` section of that type accepts. Empty for a
/// type that is not a struct.
pub fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields = None;
    // The probe answers every request with an error, after noting the
    // field list of a struct; the error is expected.
    let _ = T::deserialize(FieldsProbe(&mut fields));
    fields.unwrap_or(&[])
}

/// The key a serde "unknown field `KEY`" message names.
pub fn unknown_field(error: &str) -> Option<&str> {
    let start = error.find("unknown field `")? + "unknown field `".len();
    let len = error[start..].find('`')?;
    Some(&error[start..start + len])
}

/// `error` (a config parse error, on one line), with a sentence added when
/// it is an unknown field that is a key of one of `sections`: where it
/// belongs and why it was read as being elsewhere.
pub fn explain(error: String, sections: &[Section]) -> String {
    let Some(key) = unknown_field(&error) else {
        return error;
    };
    match sections.iter().find(|s| s.keys.contains(&key)) {
        Some(section) => format!(
            "{}; `{key}` is a valid key, but it belongs {}: in TOML every key after a \
             [section] line belongs to that section, up to the next one",
            error.trim_end(),
            section.place
        ),
        None => error,
    }
}

/// A serde deserializer that only records the field list of the struct
/// asked for.
struct FieldsProbe<'a>(&'a mut Option<&'static [&'static str]>);

/// The probe's one answer.
#[derive(Debug)]
struct Probed;

impl fmt::Display for Probed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("field list probed")
    }
}

impl std::error::Error for Probed {}

impl de::Error for Probed {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Probed
    }
}

impl<'de> Deserializer<'de> for FieldsProbe<'_> {
    type Error = Probed;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Probed> {
        Err(Probed)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Probed> {
        *self.0 = Some(fields);
        Err(Probed)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Probe {
        host: Option<String>,
        #[serde(rename = "known_hosts")]
        pins: Option<String>,
    }

    #[test]
    fn fields_come_from_the_struct() {
        assert_eq!(fields_of::<Probe>(), ["host", "known_hosts"]);
        assert!(fields_of::<String>().is_empty());
    }

    #[test]
    fn a_key_of_another_section_is_placed() {
        const TOP: Section = Section {
            place: "at the top",
            keys: &["spool_directory"],
        };
        let error = "config x: TOML parse error at line 3, column 1 | unknown field \
                     `spool_directory`, expected one of `host`, `port`"
            .to_owned();
        let explained = explain(error.clone(), &[TOP]);
        assert!(explained.starts_with(&error), "{explained}");
        assert!(
            explained.contains("; `spool_directory` is a valid key, but it belongs at the top: "),
            "{explained}"
        );
        let typo = "unknown field `spool_dir`, expected one of `host`".to_owned();
        assert_eq!(explain(typo.clone(), &[TOP]), typo);
        assert_eq!(unknown_field("missing field `host`"), None);
    }
}
