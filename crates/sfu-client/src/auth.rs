//! The pool's credential for the SFU's internal API: what the SFU checks and every
//! caller (signaling, the recorder, relaying SFUs, tests) presents as
//! `Authorization: Bearer <token>`.
//!
//! A process takes it from its environment ([`TOKEN_ENV`], else the file named by
//! [`TOKEN_FILE_ENV`]), once: [`process_token`]. [`SfuApi::new`](crate::SfuApi::new)
//! and [`SfuApi::with_client`](crate::SfuApi::with_client) present that one, so a
//! component whose pods get the variable needs no code of its own.

use std::sync::{Arc, Mutex};

use rand::Rng as _;
use reqwest::header::HeaderValue;
pub use switchboard_sfu_api::auth::{INSECURE_ENV, SCHEME, TOKEN_ENV, TOKEN_FILE_ENV};

/// Shorter credentials are refused: the operator makes 64 hex digits (32 random bytes).
pub const MIN_LEN: usize = 16;

/// A credential. Its `Debug` never shows the secret; [`ApiToken::expose`] does.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(Arc<str>);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

/// Why a configured credential cannot be used; names where it came from.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TokenError(String);

impl ApiToken {
    /// `text` without surrounding whitespace (a file's newline): at least [`MIN_LEN`]
    /// characters of RFC 6750's token alphabet (letters, digits, `-._~+/`, trailing `=`).
    pub fn new(text: &str) -> Result<Self, TokenError> {
        let t = text.trim();
        if t.len() < MIN_LEN {
            return Err(TokenError(format!(
                "the credential has {} characters; at least {MIN_LEN} are needed",
                t.len()
            )));
        }
        let body = t.trim_end_matches('=');
        if body.is_empty() || !body.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)) {
            return Err(TokenError(
                "the credential may hold only letters, digits, `-._~+/` and a trailing `=` (RFC 6750)".into(),
            ));
        }
        Ok(Self(t.into()))
    }

    /// 32 random bytes (the thread's cryptographically secure generator), as 64 hex digits.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill(&mut bytes);
        Self(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>().into())
    }

    /// The credential the environment configures: [`TOKEN_ENV`], else the contents of
    /// the file [`TOKEN_FILE_ENV`] names; `None` when neither is set.
    pub fn from_env() -> Result<Option<Self>, TokenError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if let Some(value) = var(TOKEN_ENV) {
            return Self::new(&value).map(Some).map_err(|e| TokenError(format!("{TOKEN_ENV}: {}", e.0)));
        }
        let Some(path) = var(TOKEN_FILE_ENV) else { return Ok(None) };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| TokenError(format!("{TOKEN_FILE_ENV}: cannot read {path}: {e}")))?;
        Self::new(&text).map(Some).map_err(|e| TokenError(format!("{TOKEN_FILE_ENV} ({path}): {}", e.0)))
    }

    /// The secret itself (for a Secret, an environment variable, a header).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this credential, in time independent of where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        // The length is no secret (every credential the operator makes has 64 digits).
        if presented.len() != expected.len() {
            return false;
        }
        let difference = expected.iter().zip(presented).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(difference) == 0
    }

    /// `Bearer <token>`, marked sensitive (left out of reqwest's and hyper's debug output).
    pub fn header_value(&self) -> HeaderValue {
        let mut value = HeaderValue::from_str(&format!("{SCHEME} {}", self.0)).expect("checked: visible ASCII");
        value.set_sensitive(true);
        value
    }
}

/// The token of an `Authorization` header value `Bearer <token>` (scheme in any case).
pub fn bearer(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = (header.get(..SCHEME.len())?, header.get(SCHEME.len()..)?);
    if !scheme.eq_ignore_ascii_case(SCHEME.as_bytes()) || rest.first() != Some(&b' ') {
        return None;
    }
    Some(rest.trim_ascii())
}

/// `None` until first asked; then what the environment said (or what a harness set).
static PROCESS: Mutex<Option<Option<ApiToken>>> = Mutex::new(None);

fn load(slot: &mut Option<Option<ApiToken>>) -> &mut Option<ApiToken> {
    slot.get_or_insert_with(|| match ApiToken::from_env() {
        Ok(token) => token,
        Err(e) => {
            // Requests go out without a credential and the SFU says 401: say why here.
            tracing::error!(error = %e, "the SFU API credential is configured but unusable");
            None
        }
    })
}

/// This process's credential, read from the environment on first use; what
/// [`SfuApi::new`](crate::SfuApi::new) presents.
pub fn process_token() -> Option<ApiToken> {
    load(&mut PROCESS.lock().expect("lock")).clone()
}

/// This process's credential, or, when the environment configures none, a new one
/// that every client of this process presents from now on. For SFUs run inside a
/// test process (`sfu_pod::local`): they and the process's clients share it.
pub fn process_token_or_generate() -> ApiToken {
    load(&mut PROCESS.lock().expect("lock")).get_or_insert_with(ApiToken::generate).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_trimmed_and_never_printed() {
        let t = ApiToken::new("  0123456789abcdef0123\n").unwrap();
        assert_eq!(t.expose(), "0123456789abcdef0123");
        assert_eq!(format!("{t:?}"), "ApiToken(<redacted>)");
        assert!(ApiToken::new("short").unwrap_err().to_string().contains("at least 16"));
        assert!(ApiToken::new("0123456789abcdef 0123").is_err(), "no spaces inside");
        assert!(ApiToken::new("0123456789abcdef\r\nX-Evil: 1").is_err(), "no header injection");
        assert!(ApiToken::new("QUJDREVGR0hJSktMTU5PUA==").is_ok(), "base64 with padding");
        assert!(ApiToken::new("================").is_err());
        let generated = ApiToken::generate();
        assert_eq!(generated.expose().len(), 64);
        assert!(generated.expose().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(generated, ApiToken::generate());
        assert!(generated.header_value().is_sensitive());
    }

    #[test]
    fn matching_is_exact() {
        let t = ApiToken::new("0123456789abcdef0123").unwrap();
        assert!(t.matches(b"0123456789abcdef0123"));
        assert!(!t.matches(b"0123456789abcdef0124"));
        assert!(!t.matches(b"0123456789abcdef012"));
        assert!(!t.matches(b"0123456789abcdef01234"));
        assert!(!t.matches(b""));
    }

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearerabc"), None);
        assert_eq!(bearer(b"Bear"), None);
        assert_eq!(bearer(b"Bearer"), None);
    }
}
