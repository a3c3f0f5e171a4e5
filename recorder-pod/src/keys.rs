//! Names and keys that become paths on the volume or keys in the bucket. Whatever comes
//! from a user (a RecordingJob's names, its S3 prefix, its PVC path) or from an object
//! (a key listed in the bucket) is checked here before it is joined to a directory or a
//! prefix, so that it cannot leave it: every segment is non-empty, is not `.` or `..`,
//! and has only ASCII letters, digits, `-`, `_` and `.`. That also refuses the encoded
//! forms (`%2e%2e`, `..%2f`), backslashes, control characters and look-alike Unicode,
//! which some server or file system on the way might decode into a separator.

use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} {why}")]
pub struct KeyError {
    what: String,
    value: String,
    why: &'static str,
}

fn refuse(what: &str, value: &str, why: &'static str) -> KeyError {
    KeyError { what: what.to_owned(), value: value.to_owned(), why }
}

/// Bytes a segment may hold.
fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

/// One path segment: a directory or file name, one level of a key.
pub fn segment<'a>(what: &str, s: &'a str) -> Result<&'a str, KeyError> {
    if s.is_empty() {
        return Err(refuse(what, s, "is empty"));
    }
    if s == "." || s == ".." {
        return Err(refuse(what, s, "is a relative path segment"));
    }
    if s.len() > 255 {
        return Err(refuse(what, s, "is longer than 255 bytes"));
    }
    if let Some(b) = s.bytes().find(|b| !allowed(*b)) {
        return Err(if b == b'/' || b == b'\\' {
            refuse(what, s, "has a path separator")
        } else {
            refuse(what, s, "has a character other than ASCII letters, digits, '-', '_' and '.'")
        });
    }
    Ok(s)
}

/// A relative key or path (`tracks/alice/alice-mic.ogg`): segments joined by `/`, no
/// leading `/`, no empty segment, each a [`segment`].
pub fn relative<'a>(what: &str, s: &'a str) -> Result<Vec<&'a str>, KeyError> {
    if s.is_empty() {
        return Err(refuse(what, s, "is empty"));
    }
    if s.starts_with('/') {
        return Err(refuse(what, s, "is absolute"));
    }
    s.split('/').map(|part| segment(what, part).map_err(|e| refuse(what, s, e.why))).collect()
}

/// A user's key prefix (`RECORDER_S3_PREFIX`): one `/` at either end is tolerated and
/// dropped (`/rec/` is `rec`); inside it is a [`relative`] key. Empty: no prefix.
pub fn prefix(what: &str, s: &str) -> Result<String, KeyError> {
    if s.is_empty() || s == "/" {
        return Ok(String::new());
    }
    let trimmed = s.strip_prefix('/').unwrap_or(s);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    relative(what, trimmed).map_err(|e| refuse(what, s, e.why)).map(|parts| parts.join("/"))
}

/// An absolute directory given by the operator (`RECORDER_VOLUME_DIR`, which ends in the
/// RecordingJob's PVC path): `/` then [`relative`] segments, or `/` alone.
pub fn absolute_dir(what: &str, s: &str) -> Result<PathBuf, KeyError> {
    let Some(rest) = s.strip_prefix('/') else {
        return Err(refuse(what, s, "is not an absolute path"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if !rest.is_empty() {
        relative(what, rest).map_err(|e| refuse(what, s, e.why))?;
    }
    Ok(PathBuf::from(s))
}

/// The `/`-separated key of `local`, a file under `dir` (the recording's directory);
/// refused if `local` is not under it or a component is not a [`segment`].
pub fn key_of(dir: &Path, local: &Path) -> Result<String, KeyError> {
    let shown = local.display().to_string();
    let rel = local.strip_prefix(dir).map_err(|_| refuse("file", &shown, "is not in the recording's directory"))?;
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(os) => {
                let s = os.to_str().ok_or_else(|| refuse("file", &shown, "is not UTF-8"))?;
                parts.push(segment("file", s).map_err(|e| refuse("file", &shown, e.why))?);
            }
            _ => return Err(refuse("file", &shown, "is not a plain path inside the recording's directory")),
        }
    }
    if parts.is_empty() {
        return Err(refuse("file", &shown, "is the recording's directory itself"));
    }
    Ok(parts.join("/"))
}

/// Where the object `rel` (a key relative to the recording's prefix, from a listing) is
/// written under `dir`.
pub fn local_path(dir: &Path, rel: &str) -> Result<PathBuf, KeyError> {
    let mut out = dir.to_path_buf();
    for part in relative("object key", rel)? {
        out.push(part);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What someone could try to climb out of a directory or prefix with.
    const TRAVERSALS: &[&str] = &[
        "..",
        ".",
        "../x",
        "a/../../b",
        "a/./b",
        "/etc/passwd",
        "//etc/passwd",
        "a//b",
        "a/",
        "",
        "%2e%2e",
        "%2E%2E/x",
        "..%2fx",
        "%2e%2e%2fetc%2fpasswd",
        "..\\x",
        "a\\..\\..\\b",
        "a\0b",
        "a\nb",
        "\u{ff0e}\u{ff0e}/x",
        "..\u{2215}x",
        "a b",
        "a:b",
        "~/x",
    ];

    #[test]
    fn traversal_and_encoded_forms_are_refused_as_relative_keys() {
        for t in TRAVERSALS {
            assert!(relative("key", t).is_err(), "{t:?} was accepted");
        }
    }

    #[test]
    fn traversal_is_refused_as_a_name() {
        for t in TRAVERSALS {
            assert!(segment("name", t).is_err(), "{t:?} was accepted");
        }
        let err = segment("meeting", "../x").unwrap_err().to_string();
        assert!(err.contains("meeting") && err.contains("../x"), "{err}");
    }

    #[test]
    fn ordinary_names_and_keys_pass() {
        for ok in ["standup", "rec-1", "a.b", "0000012000-a1.ivf", "track.json", ".write-probe", "x_y"] {
            assert_eq!(segment("name", ok), Ok(ok));
        }
        assert_eq!(relative("key", "tracks/alice/alice-mic.ogg").unwrap(), ["tracks", "alice", "alice-mic.ogg"]);
    }

    #[test]
    fn prefixes_drop_one_surrounding_slash_and_refuse_the_rest() {
        assert_eq!(prefix("p", "/rec/").unwrap(), "rec");
        assert_eq!(prefix("p", "rec/2024").unwrap(), "rec/2024");
        assert_eq!(prefix("p", "").unwrap(), "");
        assert_eq!(prefix("p", "/").unwrap(), "");
        for bad in ["//", "../x", "a/../../b", "//etc/passwd", "rec//x", "%2e%2e", "a/%2E%2E/b", "rec/../../other-team"]
        {
            assert!(prefix("p", bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn volume_dirs_are_absolute_without_relative_or_empty_segments() {
        assert_eq!(absolute_dir("d", "/recordings/meetings").unwrap(), PathBuf::from("/recordings/meetings"));
        assert!(absolute_dir("d", "/recordings").is_ok());
        assert!(absolute_dir("d", "/").is_ok());
        for bad in
            ["recordings", "../x", "/recordings/../../etc", "/recordings/./x", "/recordings//x", "/recordings/%2e%2e"]
        {
            assert!(absolute_dir("d", bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn files_outside_the_recording_have_no_key() {
        let dir = Path::new("/tmp/recorder/ns/m/j");
        assert_eq!(key_of(dir, &dir.join("tracks/alice/a.ogg")).unwrap(), "tracks/alice/a.ogg");
        assert!(key_of(dir, Path::new("/etc/passwd")).is_err());
        assert!(key_of(dir, &dir.join("../other/x")).is_err());
        assert!(key_of(dir, &dir.join("tracks/../../../x")).is_err());
        assert!(key_of(dir, dir).is_err());
    }

    #[test]
    fn listed_keys_stay_in_the_directory() {
        let dir = Path::new("/tmp/recorder/ns/m/j");
        assert_eq!(local_path(dir, "tracks/alice/a.ogg").unwrap(), dir.join("tracks/alice/a.ogg"));
        for t in TRAVERSALS {
            assert!(local_path(dir, t).is_err(), "{t:?} was accepted");
        }
    }
}
