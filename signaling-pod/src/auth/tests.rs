use super::*;
use serde_json::json;

const USER_KEY: &[u8] = b"user-key-shared-with-the-idp-0123456789";
const SESSION_KEY: &[u8] = b"signalings-own-session-key-0123456789";
const RSA_A: &str = include_str!("../../tests/keys/rsa-a.pem");
const RSA_A_PUB: &str = include_str!("../../tests/keys/rsa-a.pub.pem");
const RSA_B: &str = include_str!("../../tests/keys/rsa-b.pem");
const EC_A: &str = include_str!("../../tests/keys/ec-a.pem");
const JWKS_A: &str = include_str!("../../tests/keys/jwks-a.json");
const JWKS_B: &str = include_str!("../../tests/keys/jwks-b.json");
const NOW: u64 = 1_800_000_000;

fn policy() -> UserPolicy {
    UserPolicy { issuer: Some("https://idp.example".into()), audience: Some("switchboard".into()) }
}

fn raw(v: serde_json::Value) -> RawUserClaims {
    serde_json::from_value(v).unwrap()
}

fn good() -> serde_json::Value {
    json!({"sub": "ann", "name": "Ann", "exp": NOW + 60, "iss": "https://idp.example", "aud": "switchboard"})
}

fn with(extra: serde_json::Value) -> serde_json::Value {
    let mut v = good();
    for (k, x) in extra.as_object().unwrap() {
        if x.is_null() {
            v.as_object_mut().unwrap().remove(k);
        } else {
            v[k] = x.clone();
        }
    }
    v
}

fn rs256(kid: Option<&str>, pem: &str, claims: &serde_json::Value) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = kid.map(Into::into);
    encode(&h, claims, &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()).unwrap()
}

fn es256(kid: Option<&str>, claims: &serde_json::Value) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = kid.map(Into::into);
    encode(&h, claims, &EncodingKey::from_ec_pem(EC_A.as_bytes()).unwrap()).unwrap()
}

fn hs256(key: &[u8], claims: &serde_json::Value) -> String {
    Keys::new(key).sign(claims)
}

fn b64(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

fn jwks_file(contents: &str) -> (PathBuf, Jwks) {
    let path = std::env::temp_dir().join(format!("jwks-{}-{}.json", std::process::id(), rand::random::<u64>()));
    std::fs::write(&path, contents).unwrap();
    let jwks = Jwks::load(&path).unwrap();
    (path, jwks)
}

fn verifier(hmac: bool, jwks: Option<Jwks>) -> UserVerifier {
    let keys = if hmac { vec![USER_KEY.to_vec()] } else { vec![] };
    UserVerifier::new(&keys, jwks, policy())
}

#[test]
fn turn_password_matches_the_coturn_reference() {
    // Computed independently with openssl:
    // printf '1433895918:alice' | openssl dgst -sha1 -hmac north -binary | base64
    let (u, p) = turn_credentials(b"north", "alice", 1433895918);
    assert_eq!(u, "1433895918:alice");
    assert_eq!(p, "RqMvcGPYTJMGThVLSi4amT4zFtI=");
}

#[test]
fn claims_are_validated_with_named_reasons() {
    let p = policy();
    let id = validate_user(raw(good()), &p, NOW).unwrap();
    assert_eq!((id.sub.as_str(), id.name.as_deref()), ("ann", Some("Ann")));
    assert_eq!(id.global_role, None);
    let refused = |v: serde_json::Value| validate_user(raw(v), &p, NOW).unwrap_err();
    assert_eq!(refused(with(json!({"exp": NOW - 60}))), AuthError::Expired);
    assert!(validate_user(raw(with(json!({"exp": NOW - 3}))), &p, NOW).is_ok(), "5 s of leeway");
    let e = |v: serde_json::Value| refused(v).to_string();
    assert!(e(with(json!({"exp": null}))).contains("exp"));
    assert!(e(with(json!({"nbf": NOW + 600}))).contains("nbf"));
    assert!(e(with(json!({"iss": "https://evil.example"}))).contains("issuer"));
    assert!(e(with(json!({"iss": null}))).contains("iss"));
    assert!(e(with(json!({"aud": "another-app"}))).contains("audience"));
    assert!(e(with(json!({"aud": null}))).contains("audience"));
    assert!(validate_user(raw(with(json!({"aud": ["x", "switchboard"]}))), &p, NOW).is_ok(), "aud as a list");
    assert!(e(with(json!({"sub": ""}))).contains("sub"));
    assert!(e(with(json!({"typ": "session"}))).contains("session token"));
    assert!(e(with(json!({"role": "emperor"}))).contains("unknown role"));
    assert!(e(with(json!({"meetings": {"standup": "host"}}))).contains("<namespace>/<name>"));
    assert!(
        e(with(json!({"mtg": "team/standup", "role": "host", "meetings": {"team/standup": "viewer"}})))
            .contains("disagree")
    );
    // Without a configured issuer and audience, the token need not carry them.
    let open = UserPolicy::default();
    assert!(validate_user(raw(json!({"sub": "ann", "exp": NOW + 60})), &open, NOW).is_ok());
    // A display name is trimmed and capped.
    let long = validate_user(raw(with(json!({"name": format!("  {}  ", "x".repeat(100))}))), &p, NOW).unwrap();
    assert_eq!(long.name.unwrap().len(), 64);
}

#[test]
fn roles_in_claims_are_scoped_or_global() {
    let p = policy();
    let id = validate_user(raw(with(json!({"role": "host"}))), &p, NOW).unwrap();
    assert_eq!((id.global_role, id.scoped.len()), (Some(Role::Host), 0), "a bare role is global");
    let id = validate_user(raw(with(json!({"role": "cohost", "mtg": "team/standup"}))), &p, NOW).unwrap();
    assert_eq!(id.global_role, None);
    assert_eq!(id.scoped.get("team/standup"), Some(&Role::CoHost));
    let id = validate_user(
        raw(with(json!({"meetings": {"team/standup": "co-host", "team/townhall": "panelist"}}))),
        &p,
        NOW,
    )
    .unwrap();
    assert_eq!(id.scoped.get("team/standup"), Some(&Role::CoHost));
    assert_eq!(id.scoped.get("team/townhall"), Some(&Role::Participant));
    // `mtg` without `role` grants nothing.
    let id = validate_user(raw(with(json!({"mtg": "team/standup"}))), &p, NOW).unwrap();
    assert!(id.scoped.is_empty() && id.global_role.is_none());
}

#[test]
fn hs256_rs256_and_es256_tokens_verify_with_their_own_keys_only() {
    let (path, jwks) = jwks_file(JWKS_A);
    let v = verifier(true, Some(jwks));
    let claims = good();
    assert_eq!(v.verify_at(&hs256(USER_KEY, &claims), NOW).unwrap().sub, "ann");
    assert_eq!(v.verify_at(&rs256(Some("rsa-a"), RSA_A, &claims), NOW).unwrap().sub, "ann");
    assert_eq!(v.verify_at(&es256(Some("ec-a"), &claims), NOW).unwrap().sub, "ann");
    let refused = |t: String| v.verify_at(&t, NOW).unwrap_err().to_string();
    // Wrong keys.
    assert!(refused(hs256(b"someone-elses-key-0123456789abcdef", &claims)).contains("Signature"));
    assert!(refused(rs256(Some("rsa-a"), RSA_B, &claims)).contains("Signature"), "signed by another RSA key");
    assert!(refused(rs256(Some("rsa-b"), RSA_B, &claims)).contains("unknown key `rsa-b`"));
    assert!(refused(rs256(None, RSA_A, &claims)).contains("kid"));
    assert!(refused(es256(Some("rsa-a"), &claims)).contains("is for RS256"), "an EC signature under an RSA kid");
    // HS-vs-RS confusion: an HMAC over the token keyed with the RSA public key.
    assert!(refused(hs256(RSA_A_PUB.as_bytes(), &claims)).contains("Signature"));
    let only_jwks = verifier(false, Some(Jwks::load(&path).unwrap()));
    let e = only_jwks.verify_at(&hs256(RSA_A_PUB.as_bytes(), &claims), NOW).unwrap_err().to_string();
    assert!(e.contains("HS256 user tokens are not accepted"), "{e}");
    let only_hmac = verifier(true, None);
    assert!(only_hmac.verify_at(&rs256(Some("rsa-a"), RSA_A, &claims), NOW).unwrap_err().to_string().contains("JWKS"));
    // alg none, and other algorithms.
    let none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims));
    assert!(refused(none).contains("not a JWT with a known algorithm"));
    let hs512 = encode(&Header::new(Algorithm::HS512), &claims, &EncodingKey::from_secret(USER_KEY)).unwrap();
    assert!(refused(hs512).contains("not accepted"));
    // Claims are still checked on a good signature.
    assert!(refused(rs256(Some("rsa-a"), RSA_A, &with(json!({"aud": "another-app"})))).contains("audience"));
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_rotated_jwks_file_is_picked_up_and_a_broken_one_keeps_the_keys() {
    let (path, jwks) = jwks_file(JWKS_A);
    let v = verifier(false, Some(jwks));
    let jwks = v.jwks().unwrap();
    assert_eq!(jwks.kids(), vec!["ec-a", "rsa-a"]);
    assert!(!jwks.reload().unwrap(), "unchanged");
    std::fs::write(&path, JWKS_B).unwrap();
    assert!(jwks.reload().unwrap());
    assert_eq!(jwks.kids(), vec!["ec-a", "rsa-b"]);
    assert!(v.verify_at(&rs256(Some("rsa-b"), RSA_B, &good()), NOW).is_ok());
    assert!(v.verify_at(&rs256(Some("rsa-a"), RSA_A, &good()), NOW).is_err(), "the retired key is gone");
    std::fs::write(&path, "{\"keys\": [").unwrap();
    assert!(jwks.reload().is_err());
    assert_eq!(jwks.kids(), vec!["ec-a", "rsa-b"], "a broken file keeps the keys held");
    let _ = std::fs::remove_file(path);
}

#[test]
fn jwks_documents_keep_signing_keys_with_a_kid_only() {
    let rsa = serde_json::from_str::<serde_json::Value>(JWKS_A).unwrap()["keys"][0].clone();
    let keys = |ks: Vec<serde_json::Value>| parse_jwks(&serde_json::to_vec(&json!({"keys": ks})).unwrap());
    let mut no_kid = rsa.clone();
    no_kid.as_object_mut().unwrap().remove("kid");
    let mut enc = rsa.clone();
    enc["use"] = json!("enc");
    let mut wrong_alg = rsa.clone();
    wrong_alg["alg"] = json!("ES256");
    let oct = json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"});
    let unknown = json!({"kty": "weird", "kid": "w"});
    let e = keys(vec![no_kid, enc, wrong_alg, oct, unknown]).err().unwrap().to_string();
    assert!(e.contains("no usable key"), "{e}");
    let got = keys(vec![rsa, json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"})]).unwrap();
    assert_eq!(got.keys().collect::<Vec<_>>(), vec!["rsa-a"], "symmetric keys in a JWKS are never used");
    assert!(parse_jwks(b"not json").is_err());
    let e = Jwks::load(Path::new("/nonexistent/jwks.json")).err().unwrap();
    assert!(format!("{e:#}").contains("SIGNALING_USER_JWKS_PATH"), "{e:#}");
}

fn binding(ns: &str, name: &str, uid: &str) -> MeetingBinding {
    MeetingBinding { namespace: ns.into(), name: name.into(), uid: uid.into() }
}

#[test]
fn session_tokens_are_signalings_own_and_bound_to_one_meeting() {
    let sessions = SessionKeys::new(SESSION_KEY, None);
    let m = binding("team", "standup", "uid-1");
    let token = sessions.issue("p-1", &m, "ann", "Ann", Role::Viewer, NOW, NOW + 60);
    let c = sessions.verify_at(&token, NOW).unwrap();
    assert_eq!((c.sub.as_str(), c.usr.as_str(), c.role), ("p-1", "ann", Role::Viewer));
    assert_eq!(c.bound_to(&m), Ok(()));
    assert!(c.bound_to(&binding("other", "standup", "uid-1")).unwrap_err().contains("namespace `team`"));
    assert!(c.bound_to(&binding("team", "standup", "uid-2")).unwrap_err().contains("created again"));
    assert!(c.bound_to(&binding("team", "retro", "uid-1")).is_err());
    assert_eq!(sessions.verify_at(&token, NOW + 600), Err(AuthError::Expired));
    // A user token is not a session token, even signed with the session key; and a
    // session token is not a user token.
    assert!(sessions.verify_at(&hs256(SESSION_KEY, &good()), NOW).is_err());
    assert!(sessions.verify_at(&hs256(USER_KEY, &good()), NOW).is_err());
    assert!(verifier(true, None).verify_at(&token, NOW).is_err(), "another key");
    let mut as_user = serde_json::to_value(&c).unwrap();
    as_user["iss"] = json!("https://idp.example");
    as_user["aud"] = json!("switchboard");
    let e = verifier(true, None).verify_at(&hs256(USER_KEY, &as_user), NOW).unwrap_err();
    assert!(e.to_string().contains("session token"), "typ: session is refused as a user token: {e}");
    // Forged with another key, or with RS256.
    let forged = SessionKeys::new(b"someone-elses-key-0123456789abcdef", None).issue(
        "p-1",
        &m,
        "ann",
        "Ann",
        Role::Host,
        NOW,
        NOW + 60,
    );
    assert!(sessions.verify_at(&forged, NOW).unwrap_err().to_string().contains("bad signature"));
    let rs = rs256(Some("rsa-a"), RSA_A, &serde_json::to_value(&c).unwrap());
    assert!(sessions.verify_at(&rs, NOW).unwrap_err().to_string().contains("RS256"));
    // Rotation: a token of the previous key is still accepted.
    let rotated = SessionKeys::new(b"the-next-session-key-0123456789abcdef", Some(SESSION_KEY));
    assert!(rotated.verify_at(&token, NOW).is_ok());
}
