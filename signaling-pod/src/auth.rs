//! Tokens and TURN credentials. Two kinds of token, two keys, two audiences:
//!
//! * **User tokens** come from the customer's identity provider (REST calls only). They
//!   are checked by [`UserVerifier`]: HS256 with the key shared with the provider
//!   (`SIGNALING_JWT_KEY`, and `SIGNALING_JWT_KEY_PREVIOUS` while rotating), and/or
//!   RS256/ES256 with the public keys of a JWKS file (`SIGNALING_USER_JWKS_PATH`; the
//!   token's `kid` picks the key; the file is read again when it changes). The
//!   algorithm decides the key family: an HS256 token is never checked against a JWKS
//!   key, `none` is never accepted. `exp` is required; `iss` and `aud` must match
//!   `SIGNALING_USER_ISSUER` and `SIGNALING_USER_AUDIENCE` when set (they must be set
//!   with a JWKS). What a valid token says is an [`Identity`]: its roles are scoped to
//!   meetings (see [`crate::access`]).
//! * **Session tokens** are signaling's own (WebSocket only), HS256 with
//!   `SIGNALING_SESSION_KEY` (see [`SessionKeys`]), audience [`SESSION_AUDIENCE`], bound
//!   to the meeting's namespace, name and UID and to one participant.
//!
//! Neither can stand in for the other: different keys, and each checks `typ`/`aud`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode};
use serde::{Deserialize, Serialize};
use switchboard_signaling_proto::Role;

/// Keys (HMAC secrets) shorter than this are refused at start-up.
pub const MIN_KEY_BYTES: usize = 32;
/// The `aud` of session tokens.
pub const SESSION_AUDIENCE: &str = "switchboard-signaling-session";
const SESSION: &str = "session";
/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 5;
/// An unknown `kid` reads the JWKS file again, at most this often.
const JWKS_RELOAD_ON_MISS: Duration = Duration::from_secs(5);

/// The claims of a simple user token, as the `signaling-pod token` command and the
/// tests write them (an identity provider may add `iss`, `aud`, `nbf`, `mtg` and
/// `meetings`; see [`RawUserClaims`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct UserClaims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A role without a meeting: it can only lower what the user gets (see [`crate::access`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
}

/// A user token's claims as read, before [`validate_user`] checks them.
#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
pub struct RawUserClaims {
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// With `mtg`: the role in that meeting. Alone: a global role, which only restricts.
    #[serde(default)]
    pub role: Option<String>,
    /// `<namespace>/<name>` of the meeting `role` is for.
    #[serde(default)]
    pub mtg: Option<String>,
    /// `{"<namespace>/<name>": "<role>"}`: roles in named meetings.
    #[serde(default)]
    pub meetings: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub exp: Option<u64>,
    #[serde(default)]
    pub nbf: Option<u64>,
    #[serde(default)]
    pub iss: Option<String>,
    #[serde(default)]
    pub aud: Option<Audience>,
    #[serde(default)]
    pub typ: Option<String>,
}

/// `aud`: one audience or several.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, want: &str) -> bool {
        match self {
            Audience::One(a) => a == want,
            Audience::Many(all) => all.iter().any(|a| a == want),
        }
    }
}

/// Who a valid user token names, and the roles it grants.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Identity {
    pub sub: String,
    pub name: Option<String>,
    /// A role without a meeting: only ever lowers the user's role (see [`crate::access`]).
    pub global_role: Option<Role>,
    /// Roles in named meetings, by `<namespace>/<name>`.
    pub scoped: BTreeMap<String, Role>,
}

/// What user tokens must say besides a valid signature.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UserPolicy {
    /// `SIGNALING_USER_ISSUER`: the `iss` required.
    pub issuer: Option<String>,
    /// `SIGNALING_USER_AUDIENCE`: a value `aud` must hold.
    pub audience: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("token invalid: {0}")]
    Invalid(String),
}

fn invalid(m: impl Into<String>) -> AuthError {
    AuthError::Invalid(m.into())
}

fn meeting_key(claim: &str, key: &str) -> Result<(), AuthError> {
    match key.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => Ok(()),
        _ => Err(invalid(format!("`{claim}` names meetings as `<namespace>/<name>`, not `{key}`"))),
    }
}

fn role_claim(what: &str, value: &str) -> Result<Role, AuthError> {
    Role::from_claim(value).ok_or_else(|| {
        invalid(format!("unknown role `{value}` {what} (host, co-host, participant, panelist or viewer)"))
    })
}

/// Checks a user token's claims (its signature already checked) at `now` (Unix seconds).
pub fn validate_user(raw: RawUserClaims, policy: &UserPolicy, now: u64) -> Result<Identity, AuthError> {
    if raw.typ.as_deref() == Some(SESSION) {
        return Err(invalid("a session token is not a user token"));
    }
    let exp = raw.exp.ok_or_else(|| invalid("no `exp`: user tokens must expire"))?;
    if exp.saturating_add(LEEWAY_SECS) < now {
        return Err(AuthError::Expired);
    }
    if raw.nbf.is_some_and(|nbf| nbf > now.saturating_add(LEEWAY_SECS)) {
        return Err(invalid("not valid yet (`nbf` is in the future)"));
    }
    if let Some(want) = &policy.issuer {
        match &raw.iss {
            Some(iss) if iss == want => {}
            Some(iss) => return Err(invalid(format!("issuer `{iss}` is not the trusted one"))),
            None => return Err(invalid("no `iss`")),
        }
    }
    if let Some(want) = &policy.audience
        && !raw.aud.as_ref().is_some_and(|a| a.contains(want))
    {
        return Err(invalid(format!("the token is not for this audience (`aud` must hold `{want}`)")));
    }
    let sub = raw.sub.filter(|s| !s.is_empty()).ok_or_else(|| invalid("empty or missing `sub`"))?;
    if sub.len() > 253 {
        return Err(invalid("`sub` is longer than 253 bytes"));
    }
    let mut scoped = BTreeMap::new();
    for (meeting, role) in raw.meetings.unwrap_or_default() {
        meeting_key("meetings", &meeting)?;
        let role = role_claim(&format!("for meeting `{meeting}`"), &role)?;
        scoped.insert(meeting, role);
    }
    let mut global_role = None;
    match (raw.mtg, raw.role) {
        (Some(meeting), Some(role)) => {
            meeting_key("mtg", &meeting)?;
            let role = role_claim("in `role`", &role)?;
            if scoped.get(&meeting).is_some_and(|r| *r != role) {
                return Err(invalid(format!("`role` and `meetings` disagree on meeting `{meeting}`")));
            }
            scoped.insert(meeting, role);
        }
        (None, Some(role)) => global_role = Some(role_claim("in `role`", &role)?),
        (Some(_), None) | (None, None) => {}
    }
    let name = raw.name.map(|n| n.trim().chars().take(64).collect::<String>()).filter(|n| !n.is_empty());
    Ok(Identity { sub, name, global_role, scoped })
}

/// A JWT's signature checked with `key` for `alg` only; claims are left to the caller.
fn signed<T: for<'de> Deserialize<'de>>(token: &str, key: &DecodingKey, alg: Algorithm) -> Result<T, AuthError> {
    let mut v = Validation::new(alg);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    decode::<T>(token, key, &v).map(|d| d.claims).map_err(|e| invalid(e.to_string()))
}

/// An HS256 key: signs and checks. Tests and the `token` command sign user tokens with it.
#[derive(Clone)]
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl Keys {
    pub fn new(secret: &[u8]) -> Self {
        Self { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret) }
    }

    pub fn sign<T: Serialize>(&self, claims: &T) -> String {
        encode(&Header::new(Algorithm::HS256), claims, &self.encoding).expect("HS256 signing cannot fail")
    }
}

/// A verification key from the JWKS.
#[derive(Clone)]
struct JwkKey {
    alg: Algorithm,
    key: DecodingKey,
}

struct JwksState {
    raw: Vec<u8>,
    keys: HashMap<String, JwkKey>,
    last_read: Instant,
}

/// The identity provider's public keys, from a JWKS file that may change (key rotation:
/// the file is read again every refresh, and at once, at most every 5 s, when a token
/// names a key it does not hold).
pub struct Jwks {
    path: PathBuf,
    state: RwLock<JwksState>,
}

/// The usable keys of a JWKS document: RSA keys (RS256) and P-256 keys (ES256) with a
/// `kid`, for signatures. Other keys (symmetric ones among them) are left out.
fn parse_jwks(bytes: &[u8]) -> anyhow::Result<HashMap<String, JwkKey>> {
    #[derive(Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_slice(bytes).context("not a JWKS document ({\"keys\": [...]})")?;
    let mut out = HashMap::new();
    for (i, v) in doc.keys.into_iter().enumerate() {
        let jwk: Jwk = match serde_json::from_value(v) {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(key = i, error = %e, "JWKS key skipped: unreadable");
                continue;
            }
        };
        let Some(kid) = jwk.common.key_id.clone().filter(|k| !k.is_empty()) else {
            tracing::warn!(key = i, "JWKS key skipped: no `kid`");
            continue;
        };
        if jwk.common.public_key_use.as_ref().is_some_and(|u| *u != PublicKeyUse::Signature) {
            continue;
        }
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
            _ => {
                tracing::warn!(%kid, "JWKS key skipped: only RSA (RS256) and P-256 (ES256) keys are used");
                continue;
            }
        };
        let declared = jwk.common.key_algorithm;
        let agrees = match declared {
            None => true,
            Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
            Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
            Some(_) => false,
        };
        if !agrees {
            tracing::warn!(%kid, ?declared, "JWKS key skipped: its `alg` is not RS256 or ES256, or not its type's");
            continue;
        }
        let key = DecodingKey::from_jwk(&jwk).with_context(|| format!("JWKS key `{kid}`"))?;
        out.insert(kid, JwkKey { alg, key });
    }
    anyhow::ensure!(!out.is_empty(), "no usable key: RS256 or ES256 signing keys with a `kid`");
    Ok(out)
}

impl Jwks {
    /// Reads and parses the file; an error names `SIGNALING_USER_JWKS_PATH`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let raw =
            std::fs::read(path).with_context(|| format!("SIGNALING_USER_JWKS_PATH: reading {}", path.display()))?;
        let keys = parse_jwks(&raw).with_context(|| format!("SIGNALING_USER_JWKS_PATH: {}", path.display()))?;
        Ok(Self { path: path.into(), state: RwLock::new(JwksState { raw, keys, last_read: Instant::now() }) })
    }

    /// Reads the file again; a changed and valid one replaces the keys (true). A broken
    /// one keeps the keys held and is an error.
    pub fn reload(&self) -> anyhow::Result<bool> {
        let raw = std::fs::read(&self.path).with_context(|| format!("reading {}", self.path.display()))?;
        let mut state = self.state.write().unwrap();
        state.last_read = Instant::now();
        if raw == state.raw {
            return Ok(false);
        }
        let keys = parse_jwks(&raw).with_context(|| format!("{}: the keys held are kept", self.path.display()))?;
        tracing::info!(path = %self.path.display(), keys = ?keys.keys().collect::<Vec<_>>(), "JWKS reloaded");
        state.keys = keys;
        state.raw = raw;
        Ok(true)
    }

    pub fn kids(&self) -> Vec<String> {
        let mut k: Vec<String> = self.state.read().unwrap().keys.keys().cloned().collect();
        k.sort();
        k
    }

    fn key(&self, kid: &str) -> Option<JwkKey> {
        if let Some(k) = self.state.read().unwrap().keys.get(kid) {
            return Some(k.clone());
        }
        let stale = self.state.read().unwrap().last_read.elapsed() >= JWKS_RELOAD_ON_MISS;
        if stale && let Err(e) = self.reload() {
            tracing::warn!(error = format!("{e:#}"), "JWKS reload");
        }
        self.state.read().unwrap().keys.get(kid).cloned()
    }
}

/// Checks user tokens (see the module's documentation).
pub struct UserVerifier {
    hmac: Vec<DecodingKey>,
    jwks: Option<Jwks>,
    policy: UserPolicy,
}

impl UserVerifier {
    /// `hmac`: the current key first, then a previous one still accepted.
    pub fn new(hmac: &[Vec<u8>], jwks: Option<Jwks>, policy: UserPolicy) -> Self {
        Self { hmac: hmac.iter().map(|k| DecodingKey::from_secret(k)).collect(), jwks, policy }
    }

    pub fn jwks(&self) -> Option<&Jwks> {
        self.jwks.as_ref()
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_at(token, now_unix())
    }

    pub fn verify_at(&self, token: &str, now: u64) -> Result<Identity, AuthError> {
        let header = decode_header(token).map_err(|e| invalid(format!("not a JWT with a known algorithm: {e}")))?;
        let raw: RawUserClaims = match header.alg {
            Algorithm::HS256 => {
                if self.hmac.is_empty() {
                    return Err(invalid("HS256 user tokens are not accepted here (only RS256/ES256 from the JWKS)"));
                }
                let mut last = invalid("no key");
                let mut found = None;
                for key in &self.hmac {
                    match signed(token, key, Algorithm::HS256) {
                        Ok(c) => {
                            found = Some(c);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                found.ok_or(last)?
            }
            Algorithm::RS256 | Algorithm::ES256 => {
                let jwks = self.jwks.as_ref().ok_or_else(|| {
                    invalid(format!("{:?} user tokens are not accepted here (no JWKS configured)", header.alg))
                })?;
                let kid =
                    header.kid.as_deref().ok_or_else(|| invalid("an RS256/ES256 token must name its key (`kid`)"))?;
                let key = jwks.key(kid).ok_or_else(|| invalid(format!("unknown key `{kid}`")))?;
                if key.alg != header.alg {
                    return Err(invalid(format!("key `{kid}` is for {:?}, not {:?}", key.alg, header.alg)));
                }
                signed(token, &key.key, key.alg)?
            }
            other => return Err(invalid(format!("algorithm {other:?} is not accepted (HS256, RS256, ES256)"))),
        };
        validate_user(raw, &self.policy, now)
    }
}

/// The meeting a session token is for: namespace, name and UID (a meeting deleted and
/// created again under the same name has another UID).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeetingBinding {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SessionClaims {
    /// Participant id.
    pub sub: String,
    /// The meeting's namespace, name and UID.
    pub ns: String,
    pub mtg: String,
    pub uid: String,
    /// The user (the user token's `sub`).
    pub usr: String,
    pub name: String,
    pub role: Role,
    pub iat: u64,
    pub exp: u64,
    pub aud: String,
    pub typ: String,
    /// In a breakout room: the main meeting (name and UID) the session goes back to when
    /// the room closes; only the server issues such tokens (`breakout-moved`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<Home>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Home {
    pub mtg: String,
    pub uid: String,
}

impl SessionClaims {
    /// Whether the token is for this meeting; the refusal says why not.
    pub fn bound_to(&self, m: &MeetingBinding) -> Result<(), String> {
        if self.ns != m.namespace {
            return Err(format!(
                "the session token is for namespace `{}`; this signaling serves `{}`",
                self.ns, m.namespace
            ));
        }
        if self.mtg != m.name {
            return Err(format!("the session token is for meeting `{}`, not `{}`", self.mtg, m.name));
        }
        if self.uid != m.uid {
            return Err(format!(
                "the session token is for an earlier meeting named `{}` (deleted and created again); join again through the REST API",
                self.mtg
            ));
        }
        Ok(())
    }
}

/// Signaling's own key for session tokens (`SIGNALING_SESSION_KEY`), and a previous one
/// still accepted while rotating (`SIGNALING_SESSION_KEY_PREVIOUS`).
pub struct SessionKeys {
    current: Keys,
    previous: Option<DecodingKey>,
}

impl SessionKeys {
    pub fn new(current: &[u8], previous: Option<&[u8]>) -> Self {
        Self { current: Keys::new(current), previous: previous.map(DecodingKey::from_secret) }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn issue(
        &self,
        participant: &str,
        meeting: &MeetingBinding,
        user: &str,
        name: &str,
        role: Role,
        now: u64,
        exp: u64,
    ) -> String {
        self.current.sign(&SessionClaims {
            sub: participant.into(),
            ns: meeting.namespace.clone(),
            mtg: meeting.name.clone(),
            uid: meeting.uid.clone(),
            usr: user.into(),
            name: name.into(),
            role,
            iat: now,
            exp,
            aud: SESSION_AUDIENCE.into(),
            typ: SESSION.into(),
            home: None,
        })
    }

    /// The session moved to `meeting` (a breakout room, whose main meeting is `home`,
    /// or back home): the same participant, user and name, a fresh expiry.
    pub fn reissue(
        &self,
        from: &SessionClaims,
        meeting: &MeetingBinding,
        role: Role,
        home: Option<Home>,
        now: u64,
        exp: u64,
    ) -> (String, SessionClaims) {
        let claims = SessionClaims {
            ns: meeting.namespace.clone(),
            mtg: meeting.name.clone(),
            uid: meeting.uid.clone(),
            role,
            iat: now,
            exp,
            home,
            ..from.clone()
        };
        (self.current.sign(&claims), claims)
    }

    pub fn verify(&self, token: &str) -> Result<SessionClaims, AuthError> {
        self.verify_at(token, now_unix())
    }

    pub fn verify_at(&self, token: &str, now: u64) -> Result<SessionClaims, AuthError> {
        let header = decode_header(token).map_err(|e| invalid(format!("not a session token ({e})")))?;
        if header.alg != Algorithm::HS256 {
            return Err(invalid(format!("not a session token (algorithm {:?})", header.alg)));
        }
        let claims: SessionClaims = std::iter::once(&self.current.decoding)
            .chain(self.previous.as_ref())
            .find_map(|k| signed::<serde_json::Value>(token, k, Algorithm::HS256).ok())
            .ok_or_else(|| invalid("not a session token of this signaling (bad signature)"))
            .and_then(|v| serde_json::from_value(v).map_err(|e| invalid(format!("not a session token ({e})"))))?;
        if claims.typ != SESSION || claims.aud != SESSION_AUDIENCE {
            return Err(invalid("not a session token"));
        }
        if claims.exp.saturating_add(LEEWAY_SECS) < now {
            return Err(AuthError::Expired);
        }
        Ok(claims)
    }
}

/// TURN credentials in the coturn REST-API style (`use-auth-secret`): the username is
/// `expiry:user` (expiry in Unix seconds) and the password is
/// base64(HMAC-SHA1(shared secret, username)). coturn recomputes the password and
/// refuses usernames whose expiry has passed.
pub fn turn_credentials(secret: &[u8], user: &str, expires_unix: u64) -> (String, String) {
    let username = format!("{expires_unix}:{user}");
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests;
