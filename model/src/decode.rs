//! A typed reader over toml's spanned document tree.
//!
//! serde stops at the first problem; an operator wants them all. So files are
//! parsed into toml's spanned tree (which also recovers from syntax errors) and
//! read through [`Table`], which records every missing key, wrong type, bad
//! value and unknown key in the [`Sink`] and carries on.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diag::Sink;
use crate::schema::{self, FileKind, Section};
use crate::units::{parse_byte_size, parse_duration};

pub(crate) type Val<'i> = Spanned<DeValue<'i>>;

/// A value that can be read from one TOML value, reporting its own problems.
pub(crate) trait Decode: Sized {
    fn decode(s: &mut Sink<'_>, v: &Val<'_>) -> Option<Self>;
}

/// One TOML table being read. Keys that are asked for are "expected"; the rest
/// are reported as unknown by [`Table::finish`].
#[derive(Debug)]
pub(crate) struct Table<'a, 'i> {
    /// `[cache]`, `[[origin]]`, … for messages.
    pub(crate) name: String,
    pub(crate) span: Range<usize>,
    entries: &'a DeTable<'i>,
    expected: BTreeSet<&'static str>,
    declared: Declared,
}

/// Where a table's keys are declared ([`crate::schema`]).
#[derive(Debug, Clone, Copy)]
enum Declared {
    /// A whole file: its keys are the top-level sections.
    Root(FileKind),
    Section(&'static Section),
    /// A value's inline table (a shield `{ name, url }`), or a test's.
    Free,
}

impl<'a, 'i> Table<'a, 'i> {
    pub(crate) fn new(name: impl Into<String>, span: Range<usize>, entries: &'a DeTable<'i>) -> Self {
        Table { name: name.into(), span, entries, expected: BTreeSet::new(), declared: Declared::Free }
    }

    /// A whole file of `kind`.
    pub(crate) fn root(kind: FileKind, span: Range<usize>, entries: &'a DeTable<'i>) -> Self {
        Table { declared: Declared::Root(kind), ..Table::new("[file]", span, entries) }
    }

    /// The table a value holds, or a type error.
    pub(crate) fn of(s: &mut Sink<'_>, name: impl Into<String>, v: &'a Val<'i>) -> Option<Self> {
        let name = name.into();
        match v.get_ref() {
            DeValue::Table(t) => Some(Table::new(name, v.span(), t)),
            other => {
                s.error(&v.span(), format!("{name} must be a table, found {}", other.type_str()));
                None
            }
        }
    }

    /// The declaration of a sub-table `key`.
    fn child(&self, key: &str) -> Declared {
        let found = match self.declared {
            Declared::Root(kind) => schema::section(kind, key),
            Declared::Section(sec) => schema::section(sec.file, &format!("{}.{key}", sec.name)),
            Declared::Free => None,
        };
        found.map_or(Declared::Free, Declared::Section)
    }

    /// Is `key` declared for this table: a key of its section, or a
    /// sub-table declared as a section of its own?
    fn declares(&self, key: &str) -> bool {
        match self.declared {
            Declared::Free => true,
            Declared::Root(_) => matches!(self.child(key), Declared::Section(_)),
            Declared::Section(sec) => sec.key(key).is_some() || matches!(self.child(key), Declared::Section(_)),
        }
    }

    pub(crate) fn get(&mut self, key: &'static str) -> Option<&'a Val<'i>> {
        debug_assert!(self.declares(key), "`{key}` of {} is read but not declared in schema.rs", self.name);
        self.expected.insert(key);
        self.entries.iter().find(|(k, _)| k.get_ref().as_ref() == key).map(|(_, v)| v)
    }

    pub(crate) fn has(&mut self, key: &'static str) -> bool {
        self.get(key).is_some()
    }

    /// A required key. Missing → reported at the table.
    pub(crate) fn req<T: Decode>(&mut self, s: &mut Sink<'_>, key: &'static str) -> Option<T> {
        match self.get(key) {
            Some(v) => T::decode(s, v),
            None => {
                s.error(&self.span, format!("missing key `{key}` in {}", self.name));
                None
            }
        }
    }

    /// An optional key: `None` when absent or invalid (invalid is reported).
    pub(crate) fn opt<T: Decode>(&mut self, s: &mut Sink<'_>, key: &'static str) -> Option<T> {
        self.get(key).and_then(|v| T::decode(s, v))
    }

    /// An optional key with a default. An invalid value is reported and the
    /// default is used so reading can go on.
    pub(crate) fn or<T: Decode>(&mut self, s: &mut Sink<'_>, key: &'static str, default: T) -> T {
        self.opt(s, key).unwrap_or(default)
    }

    /// The span of a key's value, or the table's span when absent.
    pub(crate) fn span_of(&mut self, key: &'static str) -> Range<usize> {
        self.get(key).map_or_else(|| self.span.clone(), |v| v.span())
    }

    /// An optional sub-table.
    pub(crate) fn table(&mut self, s: &mut Sink<'_>, key: &'static str) -> Option<Table<'a, 'i>> {
        let name = format!("[{}]", self.child_name(key));
        let declared = self.child(key);
        let v = self.get(key)?;
        Table::of(s, name, v).map(|t| Table { declared, ..t })
    }

    /// An optional array of tables (`[[key]]`), empty when absent.
    pub(crate) fn tables(&mut self, s: &mut Sink<'_>, key: &'static str) -> Vec<Table<'a, 'i>> {
        let name = format!("[[{}]]", self.child_name(key));
        let declared = self.child(key);
        let Some(v) = self.get(key) else { return Vec::new() };
        let of = |s: &mut Sink<'_>, name: String, v| Table::of(s, name, v).map(|t| Table { declared, ..t });
        match v.get_ref() {
            DeValue::Array(items) => items.iter().filter_map(|item| of(s, name.clone(), item)).collect(),
            DeValue::Table(_) => of(s, name, v).into_iter().collect(),
            other => {
                s.error(&v.span(), format!("{name} must be an array of tables, found {}", other.type_str()));
                Vec::new()
            }
        }
    }

    /// Every key of a table whose keys are data (a map), with its value.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&'a Spanned<std::borrow::Cow<'i, str>>, &'a Val<'i>)> {
        self.entries.iter()
    }

    fn child_name(&self, key: &str) -> String {
        let parent = self.name.trim_matches(|c| c == '[' || c == ']');
        if parent.is_empty() || parent == "file" { key.to_string() } else { format!("{parent}.{key}") }
    }

    /// Reports every key that was never asked for.
    pub(crate) fn finish(&self, s: &mut Sink<'_>) {
        for (k, _) in self.entries.iter() {
            let key = k.get_ref().as_ref();
            if self.expected.contains(key) {
                continue;
            }
            let mut msg = format!("unknown key `{key}` in {}", self.name);
            if let Some(near) = self.expected.iter().find(|e| edit_distance(e, key) <= 2) {
                msg.push_str(&format!("; did you mean `{near}`?"));
            } else if !self.expected.is_empty() {
                let all: Vec<&str> = self.expected.iter().copied().collect();
                msg.push_str(&format!("; expected one of: {}", all.join(", ")));
            }
            s.error(&k.span(), msg);
        }
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn type_error<T>(s: &mut Sink<'_>, v: &Val<'_>, expected: &str) -> Option<T> {
    s.error(&v.span(), format!("expected {expected}, found {}", v.get_ref().type_str()));
    None
}

/// Reads a string value, for decoders that parse strings.
pub(crate) fn string<'v>(s: &mut Sink<'_>, v: &'v Val<'_>, expected: &str) -> Option<&'v str> {
    match v.get_ref() {
        DeValue::String(x) => Some(x.as_ref()),
        _ => type_error(s, v, expected),
    }
}

/// Parses a string value with `parse`, reporting `Err(msg)` at the value.
pub(crate) fn parse_str<T>(
    s: &mut Sink<'_>,
    v: &Val<'_>,
    expected: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Option<T> {
    let text = string(s, v, expected)?;
    match parse(text) {
        Ok(x) => Some(x),
        Err(msg) => {
            s.error(&v.span(), msg);
            None
        }
    }
}

fn integer(s: &mut Sink<'_>, v: &Val<'_>) -> Option<i128> {
    match v.get_ref() {
        DeValue::Integer(i) => match i128::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => Some(n),
            Err(_) => {
                s.error(&v.span(), "integer out of range");
                None
            }
        },
        _ => type_error(s, v, "an integer"),
    }
}

impl Decode for String {
    fn decode(s: &mut Sink<'_>, v: &Val<'_>) -> Option<Self> {
        string(s, v, "a string").map(str::to_owned)
    }
}

impl Decode for bool {
    fn decode(s: &mut Sink<'_>, v: &Val<'_>) -> Option<Self> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => type_error(s, v, "true or false"),
        }
    }
}

macro_rules! decode_uint {
    ($($t:ty),*) => {$(
        impl Decode for $t {
            fn decode(s: &mut Sink<'_>, v: &Val<'_>) -> Option<Self> {
                let n = integer(s, v)?;
                match <$t>::try_from(n) {
                    Ok(x) => Some(x),
                    Err(_) if n < 0 => {
                        s.error(&v.span(), format!("must not be negative, found {n}"));
                        None
                    }
                    Err(_) => {
                        s.error(&v.span(), format!("{n} is too large (at most {})", <$t>::MAX));
                        None
                    }
                }
            }
        }
    )*};
}
decode_uint!(u8, u16, u32, u64);

impl Decode for f64 {
    fn decode(s: &mut Sink<'_>, v: &Val<'_>) -> Option<Self> {
        match v.get_ref() {
            DeValue::Float(f) => match f.as_str().parse::<f64>() {
                Ok(x) if x.is_finite() => Some(x),
                _ => {
                    s.error(&v.span(), "expected a finite number");
                    None
                }
            },
            DeValue::Integer(_) => integer(s, v).map(|n| n as f64),
            _ => type_error(s, v, "a number"),
        }
    }
}

impl Decode for Duration {
    fn decode(s: &mut Sink<'_>, v: &Val<'_>) -> Option<Self> {
        parse_str(s, v, "a duration such as \"30s\"", parse_duration)
    }
}

/// A size in bytes, written `"512MiB"`, `"64 KiB"`, `"1GB"` or as a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl Decode for ByteSize {
    fn decode(s: &mut Sink<'_>, v: &Val<'_>) -> Option<Self> {
        match v.get_ref() {
            DeValue::Integer(_) => {
                let n = integer(s, v)?;
                match u64::try_from(n) {
                    Ok(b) => Some(ByteSize(b)),
                    Err(_) => {
                        s.error(&v.span(), format!("a size must not be negative, found {n}"));
                        None
                    }
                }
            }
            _ => parse_str(s, v, "a size such as \"512MiB\"", |t| parse_byte_size(t).map(ByteSize)),
        }
    }
}

impl Decode for SocketAddr {
    fn decode(s: &mut Sink<'_>, v: &Val<'_>) -> Option<Self> {
        parse_str(s, v, "an address such as \"127.0.0.1:8080\"", |t| {
            t.parse().map_err(|_| format!("`{t}` is not an IP address with a port, such as \"127.0.0.1:8080\""))
        })
    }
}

impl<T: Decode> Decode for Vec<T> {
    fn decode(s: &mut Sink<'_>, v: &Val<'_>) -> Option<Self> {
        match v.get_ref() {
            DeValue::Array(items) => {
                let n = s.diagnostics.len();
                let out: Vec<T> = items.iter().filter_map(|item| T::decode(s, item)).collect();
                (s.diagnostics.len() == n).then_some(out)
            }
            _ => type_error(s, v, "an array"),
        }
    }
}

/// A value and the span it was read from, for checks that compare values.
impl<T: Decode> Decode for Spanned<T> {
    fn decode(s: &mut Sink<'_>, v: &Val<'_>) -> Option<Self> {
        T::decode(s, v).map(|x| Spanned::new(v.span(), x))
    }
}

/// An integer that must be at least 1.
pub(crate) fn positive(s: &mut Sink<'_>, t: &mut Table<'_, '_>, key: &'static str, default: u32) -> u32 {
    match t.opt::<Spanned<u32>>(s, key) {
        Some(v) if *v.get_ref() == 0 => {
            s.error(&v.span(), format!("{key} must be at least 1"));
            default
        }
        Some(v) => v.into_inner(),
        None => default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn read<T: Decode>(doc: &str) -> (Option<T>, Vec<String>) {
        let parsed = DeTable::parse(doc).expect("valid toml");
        let mut s = Sink::new(Path::new("t.toml"), doc);
        let mut t = Table::new("[file]", parsed.span(), parsed.get_ref());
        let out = t.req::<T>(&mut s, "x");
        t.finish(&mut s);
        (out, s.diagnostics.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn integers_are_range_checked() {
        assert_eq!(read::<u16>("x = 8080").0, Some(8080));
        let (v, e) = read::<u16>("x = 70000");
        assert_eq!(v, None);
        assert_eq!(e, ["t.toml:1:5: 70000 is too large (at most 65535)"]);
        let (_, e) = read::<u32>("x = -1");
        assert_eq!(e, ["t.toml:1:5: must not be negative, found -1"]);
        assert_eq!(read::<u32>("x = 0x10").0, Some(16));
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(read::<ByteSize>("x = \"512MiB\"").0, Some(ByteSize(512 << 20)));
        assert_eq!(read::<ByteSize>("x = 4096").0, Some(ByteSize(4096)));
        let (_, e) = read::<ByteSize>("x = -5");
        assert_eq!(e, ["t.toml:1:5: a size must not be negative, found -5"]);
        assert_eq!(read::<Duration>("x = \"1m 30s\"").0, Some(Duration::from_secs(90)));
        let (_, e) = read::<Duration>("x = 30");
        assert_eq!(e, ["t.toml:1:5: expected a duration such as \"30s\", found integer"]);
    }

    #[test]
    fn unknown_keys_are_named_with_a_suggestion() {
        let (_, e) = read::<bool>("x = true\nxx = 1\nzzzzzz = 2");
        assert_eq!(
            e,
            [
                "t.toml:2:1: unknown key `xx` in [file]; did you mean `x`?",
                "t.toml:3:1: unknown key `zzzzzz` in [file]; expected one of: x"
            ]
        );
    }

    #[test]
    fn missing_keys_and_arrays() {
        let (_, e) = read::<String>("y = 1");
        assert!(e[0].contains("missing key `x` in [file]"), "{e:?}");
        assert_eq!(read::<Vec<u16>>("x = [1, 2]").0, Some(vec![1, 2]));
        let (v, e) = read::<Vec<u16>>("x = [1, \"a\", -2]");
        assert_eq!(v, None);
        assert_eq!(e.len(), 2, "{e:?}");
    }

    #[test]
    fn edit_distance_counts_changes() {
        assert_eq!(edit_distance("default_ttl", "default_tll"), 1);
        assert_eq!(edit_distance("ttl", "tl"), 1);
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("", "ab"), 2);
    }
}
