//! Where a recording lives: a directory on a mounted PVC (chunks are written there
//! directly, so they survive the pod), or an S3-compatible bucket (chunks are written
//! to local scratch and uploaded as each closes; a retried run downloads them back).

use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("S3 {op} {key}: {detail}")]
    S3 { op: &'static str, key: String, detail: String },
}

#[derive(Clone, Debug)]
pub struct S3Config {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    /// Key prefix of this recording (no leading or trailing slash).
    pub prefix: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

#[derive(Clone, Debug)]
pub enum Storage {
    /// `dir`: the recording's directory on the volume; `url`: how status names it.
    Volume {
        dir: PathBuf,
        url: String,
    },
    S3 {
        scratch: PathBuf,
        s3: S3Config,
        http: reqwest::Client,
    },
}

impl Storage {
    /// The local directory the recorder writes in.
    pub fn work_dir(&self) -> &Path {
        match self {
            Storage::Volume { dir, .. } => dir,
            Storage::S3 { scratch, .. } => scratch,
        }
    }

    /// The URL of `relative` (a path inside the recording).
    pub fn url(&self, relative: &str) -> String {
        match self {
            Storage::Volume { url, .. } => format!("{}/{relative}", url.trim_end_matches('/')),
            Storage::S3 { s3, .. } => format!("s3://{}/{}/{relative}", s3.bucket, s3.prefix),
        }
    }

    /// Proves the storage takes writes (and, for S3, the credentials), before recording.
    pub async fn preflight(&self) -> Result<(), StorageError> {
        std::fs::create_dir_all(self.work_dir())?;
        let probe = self.work_dir().join(".write-probe");
        std::fs::write(&probe, b"ok")?;
        std::fs::remove_file(&probe)?;
        if let Storage::S3 { s3, http, .. } = self {
            let key = format!("{}/.write-probe", s3.prefix);
            s3_request(http, s3, reqwest::Method::PUT, &key, &[], b"ok".to_vec()).await?;
            s3_request(http, s3, reqwest::Method::DELETE, &key, &[], vec![]).await?;
        }
        Ok(())
    }

    /// Brings back what an earlier run stored (S3 only; a volume keeps it in place).
    pub async fn restore(&self) -> Result<usize, StorageError> {
        let Storage::S3 { scratch, s3, http } = self else { return Ok(0) };
        let keys = s3_list(http, s3).await?;
        let mut n = 0;
        for key in keys {
            let Some(rel) = key.strip_prefix(&format!("{}/", s3.prefix)) else { continue };
            let local = scratch.join(rel);
            if local.exists() {
                continue;
            }
            let body = s3_request(http, s3, reqwest::Method::GET, &key, &[], vec![]).await?;
            if let Some(parent) = local.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(local, body)?;
            n += 1;
        }
        Ok(n)
    }

    /// Stores `local` (a file under the work dir) where the recording lives.
    pub async fn store(&self, local: &Path) -> Result<(), StorageError> {
        let Storage::S3 { scratch, s3, http } = self else { return Ok(()) };
        let rel = local.strip_prefix(scratch).unwrap_or(local).to_string_lossy().replace('\\', "/");
        let body = std::fs::read(local)?;
        s3_request(http, s3, reqwest::Method::PUT, &format!("{}/{rel}", s3.prefix), &[], body).await?;
        Ok(())
    }

    /// Removes the whole recording (retention: Delete).
    pub async fn delete_all(&self) -> Result<(), StorageError> {
        match self {
            Storage::Volume { dir, .. } => match std::fs::remove_dir_all(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            },
            Storage::S3 { s3, http, .. } => {
                for key in s3_list(http, s3).await? {
                    s3_request(http, s3, reqwest::Method::DELETE, &key, &[], vec![]).await?;
                }
                Ok(())
            }
        }
    }
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(key).expect("any key length");
    m.update(data.as_bytes());
    m.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// RFC 3986 encoding as SigV4 wants it; `/` kept in paths.
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The `Authorization` header of an AWS Signature Version 4 request. `headers` must
/// include host, x-amz-date and x-amz-content-sha256 (lower-case names).
#[allow(clippy::too_many_arguments)] // the inputs SigV4 signs, each a distinct string; a struct would only rename them
pub fn sigv4_authorization(
    method: &str,
    path: &str,
    query: &[(String, String)],
    headers: &[(String, String)],
    payload_sha256: &str,
    region: &str,
    access_key: &str,
    secret: &str,
    amz_date: &str,
) -> String {
    let mut q: Vec<(String, String)> =
        query.iter().map(|(k, v)| (uri_encode(k, false), uri_encode(v, false))).collect();
    q.sort();
    let canonical_query = q.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
    let mut h: Vec<(String, String)> =
        headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned())).collect();
    h.sort();
    let canonical_headers: String = h.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_headers = h.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(";");
    let canonical = format!(
        "{method}\n{}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{payload_sha256}",
        uri_encode(path, true)
    );
    let date = &amz_date[..8];
    let scope = format!("{date}/{region}/s3/aws4_request");
    let to_sign = format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", hex(&Sha256::digest(canonical.as_bytes())));
    let key = hmac(&hmac(&hmac(&hmac(format!("AWS4{secret}").as_bytes(), date), region), "s3"), "aws4_request");
    let signature = hex(&hmac(&key, &to_sign));
    format!("AWS4-HMAC-SHA256 Credential={access_key}/{scope},SignedHeaders={signed_headers},Signature={signature}")
}

/// One signed S3 request on `key` (empty: the bucket); the response body.
pub async fn s3_request(
    http: &reqwest::Client,
    s3: &S3Config,
    method: reqwest::Method,
    key: &str,
    query: &[(String, String)],
    body: Vec<u8>,
) -> Result<Vec<u8>, StorageError> {
    let op = match method.as_str() {
        "PUT" => "put",
        "GET" => "get",
        "DELETE" => "delete",
        _ => "request",
    };
    let err = |detail: String| StorageError::S3 { op, key: key.to_owned(), detail };
    let base = reqwest::Url::parse(&s3.endpoint).map_err(|e| err(format!("endpoint: {e}")))?;
    let host = match base.port() {
        Some(p) => format!("{}:{p}", base.host_str().unwrap_or_default()),
        None => base.host_str().unwrap_or_default().to_owned(),
    };
    // Path-style addressing: works with every S3-compatible service.
    let path = if key.is_empty() { format!("/{}", s3.bucket) } else { format!("/{}/{key}", s3.bucket) };
    let amz_date = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();
    let payload = hex(&Sha256::digest(&body));
    let headers = vec![
        ("host".to_owned(), host),
        ("x-amz-content-sha256".to_owned(), payload.clone()),
        ("x-amz-date".to_owned(), amz_date.clone()),
    ];
    let auth = sigv4_authorization(
        method.as_str(),
        &path,
        query,
        &headers,
        &payload,
        &s3.region,
        &s3.access_key_id,
        &s3.secret_access_key,
        &amz_date,
    );
    let mut url = base.clone();
    url.set_path(&uri_encode(&path, true));
    if !query.is_empty() {
        let q = query
            .iter()
            .map(|(k, v)| format!("{}={}", uri_encode(k, false), uri_encode(v, false)))
            .collect::<Vec<_>>()
            .join("&");
        url.set_query(Some(&q));
    }
    // Some S3-compatible servers read a body without a content type as a form.
    let content_type = match key.rsplit('.').next() {
        Some("mp4") => "video/mp4",
        Some("webm") => "video/webm",
        Some("ogg") => "audio/ogg",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    };
    let resp = http
        .request(method, url)
        .header("content-type", content_type)
        .header("x-amz-content-sha256", payload)
        .header("x-amz-date", amz_date)
        .header("authorization", auth)
        .body(body)
        .send()
        .await
        .map_err(|e| err(e.to_string()))?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| err(e.to_string()))?;
    if !status.is_success() {
        return Err(err(format!(
            "{status}: {}",
            String::from_utf8_lossy(&bytes).chars().take(300).collect::<String>()
        )));
    }
    Ok(bytes.to_vec())
}

/// Every key under the recording's prefix (ListObjectsV2, paginated).
pub async fn s3_list(http: &reqwest::Client, s3: &S3Config) -> Result<Vec<String>, StorageError> {
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut query =
            vec![("list-type".to_owned(), "2".to_owned()), ("prefix".to_owned(), format!("{}/", s3.prefix))];
        if let Some(t) = &token {
            query.push(("continuation-token".to_owned(), t.clone()));
        }
        let body = s3_request(http, s3, reqwest::Method::GET, "", &query, vec![]).await?;
        let text = String::from_utf8_lossy(&body);
        keys.extend(xml_values(&text, "Key"));
        token = xml_values(&text, "NextContinuationToken").into_iter().next();
        if token.is_none() {
            return Ok(keys);
        }
    }
}

fn xml_values(text: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(&open) {
        let after = &rest[at + open.len()..];
        let Some(end) = after.find(&close) else { break };
        out.push(
            after[..end]
                .replace("&amp;", "&")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'"),
        );
        rest = &after[end + close.len()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's documented example "GET Bucket (List Objects)" of Signature Version 4.
    #[test]
    fn sigv4_matches_the_aws_documentation_example() {
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let auth = sigv4_authorization(
            "GET",
            "/",
            &[("max-keys".into(), "2".into()), ("prefix".into(), "J".into())],
            &[
                ("host".into(), "examplebucket.s3.amazonaws.com".into()),
                ("x-amz-content-sha256".into(), empty.into()),
                ("x-amz-date".into(), "20130524T000000Z".into()),
            ],
            empty,
            "us-east-1",
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "20130524T000000Z",
        );
        assert!(auth.ends_with("Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"), "{auth}");
    }

    #[test]
    fn list_results_are_read_from_xml() {
        let xml = "<ListBucketResult><Contents><Key>a/b&amp;c.ogg</Key></Contents><Contents><Key>a/d.ivf</Key></Contents><NextContinuationToken>t1</NextContinuationToken></ListBucketResult>";
        assert_eq!(xml_values(xml, "Key"), vec!["a/b&c.ogg", "a/d.ivf"]);
        assert_eq!(xml_values(xml, "NextContinuationToken"), vec!["t1"]);
    }

    #[test]
    fn volume_urls_name_the_file_inside_the_recording() {
        let s = Storage::Volume { dir: "/data/ns/m/j".into(), url: "pvc://recordings/meetings/ns/m/j".into() };
        assert_eq!(s.url("gallery.mp4"), "pvc://recordings/meetings/ns/m/j/gallery.mp4");
    }
}
