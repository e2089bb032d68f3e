//! Client authentication by token: the tokens file (`auth_tokens`), read at start and again at
//! every reload, and the check of a `hello`'s `token`.
//!
//! A line is `name:token` or a bare `token` (then named `token-LINE`); blank lines and lines
//! starting with `#` are skipped. A token is compared with every token of the file in constant
//! time (`subtle`), so the time of a refusal says nothing of how close a guess came. The name,
//! never the token, is what logs, `/connections` and the records show.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use subtle::ConstantTimeEq;

/// Why a tokens file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file cannot be read.
    #[error("cannot read the tokens file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line holds no usable token.
    #[error("{path}, line {line}: {reason}")]
    Line {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
}

/// The tokens clients may present, each with its name.
#[derive(Debug)]
pub struct Tokens {
    entries: Vec<(Arc<str>, Box<[u8]>)>,
}

/// Shortest token accepted: 16 characters (a guessable token would make the check pointless).
pub const MIN_TOKEN_LEN: usize = 16;

impl Tokens {
    /// Reads a tokens file.
    pub fn from_file(path: &Path) -> Result<Tokens, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.to_owned(),
            source,
        })?;
        Tokens::parse(&text).map_err(|(line, reason)| AuthError::Line {
            path: path.to_owned(),
            line,
            reason,
        })
    }

    /// Parses the text of a tokens file; an error names the line (from 1) and the fault.
    pub fn parse(text: &str) -> Result<Tokens, (usize, &'static str)> {
        let mut entries = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, token) = match line.split_once(':') {
                Some((name, token)) => (name.trim().to_owned(), token.trim()),
                None => (format!("token-{}", index + 1), line),
            };
            if name.is_empty() {
                return Err((index + 1, "empty name before ':'"));
            }
            if token.len() < MIN_TOKEN_LEN {
                return Err((index + 1, "a token must be at least 16 characters"));
            }
            entries.push((Arc::from(name), token.as_bytes().into()));
        }
        if entries.is_empty() {
            return Err((0, "no token in the file"));
        }
        Ok(Tokens { entries })
    }

    /// The name of `presented`, if it is one of the tokens. Every token is compared, each in
    /// constant time.
    pub fn check(&self, presented: &str) -> Option<Arc<str>> {
        let mut found = None;
        for (name, token) in &self.entries {
            if bool::from(token.as_ref().ct_eq(presented.as_bytes())) {
                found = Some(Arc::clone(name));
            }
        }
        found
    }

    /// How many tokens the file holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the file holds none (never, for a parsed file).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The tokens in force; a reload replaces them.
#[derive(Debug, Default)]
pub(crate) struct ClientTokens {
    current: ArcSwapOption<Tokens>,
}

impl ClientTokens {
    /// Reads the file `path` names, if any, and puts its tokens in force.
    pub fn load(&self, path: Option<&Path>) -> Result<Option<usize>, AuthError> {
        let tokens = path.map(Tokens::from_file).transpose()?;
        let count = tokens.as_ref().map(Tokens::len);
        self.current.store(tokens.map(Arc::new));
        Ok(count)
    }

    /// Puts `tokens` in force.
    pub fn replace(&self, tokens: Tokens) {
        self.current.store(Some(Arc::new(tokens)));
    }

    /// The name of `presented`; `None` when it is no token, or no tokens are configured.
    pub fn check(&self, presented: &str) -> Option<Arc<str>> {
        self.current.load().as_ref()?.check(presented)
    }

    /// Whether tokens are configured.
    pub fn configured(&self) -> bool {
        self.current.load().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_and_bare_tokens_are_found_and_nothing_else() {
        let tokens = Tokens::parse(
            "# fleet tokens\n\nsensors:0123456789abcdef0123\n  fedcba9876543210fedc  \n",
        )
        .unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(
            tokens.check("0123456789abcdef0123").as_deref(),
            Some("sensors")
        );
        assert_eq!(
            tokens.check("fedcba9876543210fedc").as_deref(),
            Some("token-4")
        );
        assert_eq!(tokens.check("0123456789abcdef012"), None);
        assert_eq!(tokens.check(""), None);
    }

    #[test]
    fn a_short_token_or_an_empty_file_is_refused_with_its_line() {
        assert_eq!(
            Tokens::parse("a:short").unwrap_err(),
            (1, "a token must be at least 16 characters")
        );
        assert_eq!(Tokens::parse("# nothing\n").unwrap_err().0, 0);
        assert_eq!(
            Tokens::parse(":0123456789abcdef0123").unwrap_err(),
            (1, "empty name before ':'")
        );
    }
}
