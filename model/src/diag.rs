//! Problems found in a configuration file, each pinned to `file:line:column`.
//!
//! Every loader collects all the problems of a file before it returns, so an
//! operator fixes a file in one pass instead of one error per run.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A position in a source file, 1-based as editors count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loc {
    pub file: Arc<Path>,
    pub line: usize,
    pub column: usize,
}

impl Loc {
    /// Turns a byte offset in `src` into a line and column (columns count characters).
    pub fn at(file: &Arc<Path>, src: &str, offset: usize) -> Self {
        let offset = offset.min(src.len());
        let before = src.get(..offset).unwrap_or(src);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = src.get(line_start..offset).map_or(1, |s| s.chars().count() + 1);
        Loc { file: Arc::clone(file), line, column }
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// A value together with where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Located<T> {
    pub value: T,
    pub loc: Loc,
}

impl<T> std::ops::Deref for Located<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// One problem in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub loc: Loc,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.loc, self.message)
    }
}

/// Every problem found while loading one or more files. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub diagnostics: Vec<Diagnostic>,
}

impl ConfigError {
    /// A problem with the file as a whole (missing, unreadable), reported at 1:1.
    pub fn whole_file(file: &Path, message: impl Into<String>) -> Self {
        let file: Arc<Path> = Arc::from(file);
        ConfigError { diagnostics: vec![Diagnostic { loc: Loc { file, line: 1, column: 1 }, message: message.into() }] }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// What a path named in a file must be, checked when the file is resolved
/// (stage 3), not while it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Need {
    /// An existing file the node reads.
    File,
    /// An existing folder.
    Dir,
    /// A folder the node writes (it may be created): the word says what it
    /// is for.
    WritableDir(&'static str),
    /// A site file to load with the node.
    SiteFile,
}

/// A path to check at resolution, with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pending {
    pub(crate) loc: Loc,
    pub(crate) path: PathBuf,
    pub(crate) need: Need,
}

/// Collects problems for one source text, and the paths to check once it
/// is read.
#[derive(Debug)]
pub(crate) struct Sink<'s> {
    pub(crate) file: Arc<Path>,
    pub(crate) src: &'s str,
    pub(crate) diagnostics: Vec<Diagnostic>,
    pub(crate) pending: Vec<Pending>,
}

impl<'s> Sink<'s> {
    pub(crate) fn new(file: &Path, src: &'s str) -> Self {
        Sink { file: Arc::from(file), src, diagnostics: Vec::new(), pending: Vec::new() }
    }

    pub(crate) fn loc(&self, span: &Range<usize>) -> Loc {
        Loc::at(&self.file, self.src, span.start)
    }

    pub(crate) fn error(&mut self, span: &Range<usize>, message: impl Into<String>) {
        let loc = self.loc(span);
        self.diagnostics.push(Diagnostic { loc, message: message.into() });
    }

    /// Notes `path`, written at `span`, to be checked at resolution.
    pub(crate) fn later(&mut self, span: &Range<usize>, path: PathBuf, need: Need) -> PathBuf {
        self.pending.push(Pending { loc: self.loc(span), path: path.clone(), need });
        path
    }

    pub(crate) fn located<T>(&self, span: &Range<usize>, value: T) -> Located<T> {
        Located { value, loc: self.loc(span) }
    }

    /// The value when nothing was reported, else every problem in source order.
    pub(crate) fn finish<T>(mut self, value: Option<T>) -> Result<T, ConfigError> {
        match value {
            Some(v) if self.diagnostics.is_empty() => Ok(v),
            _ => {
                self.diagnostics.sort_by_key(|d| (d.loc.line, d.loc.column));
                self.diagnostics.dedup();
                if self.diagnostics.is_empty() {
                    // A decoder returned nothing without saying why: still an error.
                    let loc = Loc { file: self.file, line: 1, column: 1 };
                    self.diagnostics.push(Diagnostic { loc, message: "invalid file".into() });
                }
                Err(ConfigError { diagnostics: self.diagnostics })
            }
        }
    }
}

/// Where a file's relative paths are resolved from: the file's own folder.
pub fn base_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loc_counts_lines_and_characters() {
        let f: Arc<Path> = Arc::from(Path::new("a.toml"));
        let src = "one\ntwö = 3\n";
        assert_eq!(Loc::at(&f, src, 0).to_string(), "a.toml:1:1");
        let off = src.find('=').unwrap();
        assert_eq!(Loc::at(&f, src, off).to_string(), "a.toml:2:5");
        assert_eq!(Loc::at(&f, src, 10_000).line, 3);
    }
}
