//! Where a recording lives: a directory on a mounted PVC (chunks are written there
//! directly, so they survive the pod), or an S3-compatible bucket (chunks are written
//! to local scratch and uploaded as each closes; a retried run downloads them back).
//!
//! S3 goes through the `object_store` crate: AWS Signature V4 (with a session token when
//! given), path-style or virtual-host-style addressing, HTTPS by rustls on ring with the
//! system's roots (`SSL_CERT_FILE`/`SSL_CERT_DIR` honoured) plus the CAs of
//! [`S3Config::ca_file`], multipart uploads for files larger than a part, and retries
//! with exponential backoff (5xx, throttling, connection errors).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, Certificate, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::keys::{self, KeyError};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("S3 {op} {key}: {detail}")]
    S3 { op: &'static str, key: String, detail: String },
    #[error("{0}")]
    Key(#[from] KeyError),
    #[error("S3 configuration: {0}")]
    Config(String),
}

/// How requests name the bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addressing {
    /// `https://endpoint/bucket/key`: what every S3-compatible server takes.
    Path,
    /// `https://bucket.endpoint/key`: what AWS prefers (the bucket name must be a DNS name).
    VirtualHost,
}

impl std::str::FromStr for Addressing {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "path" => Ok(Addressing::Path),
            "virtual-host" => Ok(Addressing::VirtualHost),
            other => Err(format!("{other}: expected path or virtual-host")),
        }
    }
}

/// Parts of at least this size (S3 refuses smaller ones but the last).
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// Parts uploaded at once in a multipart upload (memory: this many parts, plus one).
const PARTS_IN_FLIGHT: usize = 4;

#[derive(Clone)]
pub struct S3Config {
    /// An S3-compatible service (`https://minio.example:9000`); `None`: AWS, by region.
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    /// Key prefix of this recording (no leading or trailing slash).
    pub prefix: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Temporary credentials' session token.
    pub session_token: Option<String>,
    pub addressing: Addressing,
    /// A PEM file of CA certificates trusted for the endpoint besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Files larger than this are uploaded in parts of this size.
    pub part_size: usize,
    /// Retries of a failed request (5xx, throttling, connection errors), with
    /// exponential backoff from 100 ms to 15 s, for at most `retry_timeout`.
    pub max_retries: usize,
    pub retry_timeout: Duration,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &self.session_token.as_ref().map(|_| "<redacted>"))
            .field("addressing", &self.addressing)
            .field("ca_file", &self.ca_file)
            .field("part_size", &self.part_size)
            .field("max_retries", &self.max_retries)
            .field("retry_timeout", &self.retry_timeout)
            .finish()
    }
}

impl S3Config {
    /// AWS in `us-east-1`, virtual-host addressing, 8 MiB parts, 10 retries within 3 minutes.
    pub fn new(bucket: &str, prefix: &str, access_key_id: &str, secret_access_key: &str) -> Self {
        Self {
            endpoint: None,
            region: "us-east-1".into(),
            bucket: bucket.into(),
            prefix: prefix.into(),
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: None,
            addressing: Addressing::VirtualHost,
            ca_file: None,
            part_size: 8 * 1024 * 1024,
            max_retries: 10,
            retry_timeout: Duration::from_secs(180),
        }
    }

    /// The URL requests go to for the bucket (object_store's `endpoint` when the bucket
    /// is in the host name).
    fn bucket_endpoint(&self) -> Result<Option<String>, StorageError> {
        let Some(endpoint) = &self.endpoint else { return Ok(None) };
        let endpoint = endpoint.trim_end_matches('/');
        if self.addressing == Addressing::Path {
            return Ok(Some(endpoint.to_owned()));
        }
        let (scheme, rest) = endpoint
            .split_once("://")
            .ok_or_else(|| StorageError::Config(format!("endpoint {endpoint}: no scheme")))?;
        Ok(Some(format!("{scheme}://{}.{rest}", self.bucket)))
    }

    /// A client of the bucket with this configuration's retries, or `retry`'s.
    pub fn build(&self, retry: Option<RetryConfig>) -> Result<AmazonS3, StorageError> {
        if self.part_size < MIN_PART_SIZE {
            return Err(StorageError::Config(format!("part size {} is below S3's 5 MiB", self.part_size)));
        }
        let mut options = ClientOptions::new()
            .with_timeout(Duration::from_secs(120))
            .with_connect_timeout(Duration::from_secs(5))
            .with_default_content_type("application/octet-stream");
        // Some S3-compatible servers read a body without a content type as a form.
        for (suffix, mime) in [
            ("mp4", "video/mp4"),
            ("webm", "video/webm"),
            ("ogg", "audio/ogg"),
            ("ivf", "video/x-ivf"),
            ("json", "application/json"),
        ] {
            options = options.with_content_type_for_suffix(suffix, mime);
        }
        if let Some(file) = &self.ca_file {
            let pem =
                std::fs::read(file).map_err(|e| StorageError::Config(format!("CA file {}: {e}", file.display())))?;
            let certs = Certificate::from_pem_bundle(&pem)
                .map_err(|e| StorageError::Config(format!("CA file {}: {}", file.display(), error_chain(&e))))?;
            if certs.is_empty() {
                return Err(StorageError::Config(format!("CA file {}: no PEM certificate in it", file.display())));
            }
            for cert in certs {
                options = options.with_root_certificate(cert);
            }
        }
        let retry = retry.unwrap_or(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: self.max_retries,
            retry_timeout: self.retry_timeout,
        });
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_region(&self.region)
            .with_access_key_id(&self.access_key_id)
            .with_secret_access_key(&self.secret_access_key)
            .with_virtual_hosted_style_request(self.addressing == Addressing::VirtualHost)
            .with_retry(retry)
            .with_client_options(options)
            .with_http_connector(UntrustedFailsFast);
        if let Some(endpoint) = self.bucket_endpoint()? {
            builder = builder.with_allow_http(endpoint.starts_with("http://")).with_endpoint(endpoint);
        }
        if let Some(token) = &self.session_token {
            builder = builder.with_token(token);
        }
        builder.build().map_err(|e| StorageError::Config(error_chain(&e)))
    }

    /// The object key of `rel` (a `/`-separated path inside the recording).
    pub fn key(&self, rel: &str) -> Result<ObjectPath, StorageError> {
        let rel = keys::relative("key", rel)?.join("/");
        let full = if self.prefix.is_empty() { rel } else { format!("{}/{rel}", self.prefix) };
        ObjectPath::parse(&full).map_err(|e| StorageError::Config(format!("key {full}: {e}")))
    }

    fn prefix_path(&self) -> ObjectPath {
        ObjectPath::from(self.prefix.as_str())
    }
}

/// The S3 clients of a recording: one for the data, one for the preflight probe (few
/// retries: storage that cannot be reached fails the recording within seconds).
#[derive(Clone, Debug)]
pub struct S3Client {
    store: Arc<AmazonS3>,
    probe: Arc<AmazonS3>,
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
        s3: Box<S3Config>,
        client: S3Client,
    },
}

impl Storage {
    /// A bucket's storage; fails on a configuration no request could fix (a bad
    /// endpoint, bucket or CA file).
    pub fn s3(scratch: PathBuf, s3: S3Config) -> Result<Self, StorageError> {
        if !s3.prefix.is_empty() {
            keys::relative("S3 prefix", &s3.prefix)?;
        }
        bucket_name(&s3.bucket, s3.addressing)?;
        let probe =
            RetryConfig { backoff: BackoffConfig::default(), max_retries: 3, retry_timeout: Duration::from_secs(15) };
        let client = S3Client { store: Arc::new(s3.build(None)?), probe: Arc::new(s3.build(Some(probe))?) };
        Ok(Storage::S3 { scratch, s3: Box::new(s3), client })
    }

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
            Storage::S3 { s3, .. } if s3.prefix.is_empty() => format!("s3://{}/{relative}", s3.bucket),
            Storage::S3 { s3, .. } => format!("s3://{}/{}/{relative}", s3.bucket, s3.prefix),
        }
    }

    /// Proves the storage takes writes (and, for S3, the endpoint, its certificate and
    /// the credentials), before recording.
    pub async fn preflight(&self) -> Result<(), StorageError> {
        std::fs::create_dir_all(self.work_dir())?;
        let probe = self.work_dir().join(".write-probe");
        std::fs::write(&probe, b"ok")?;
        std::fs::remove_file(&probe)?;
        if let Storage::S3 { s3, client, .. } = self {
            let key = s3.key(".write-probe")?;
            client.probe.put(&key, PutPayload::from_static(b"ok")).await.map_err(|e| s3_error("put", &key, e))?;
            client.probe.delete(&key).await.map_err(|e| s3_error("delete", &key, e))?;
        }
        Ok(())
    }

    /// Brings back what an earlier run stored (S3 only; a volume keeps it in place).
    /// A key that would land outside the scratch directory is skipped.
    pub async fn restore(&self) -> Result<usize, StorageError> {
        let Storage::S3 { scratch, s3, client } = self else { return Ok(0) };
        let prefix = s3.prefix_path();
        let objects: Vec<_> =
            client.store.list(Some(&prefix)).try_collect().await.map_err(|e| s3_error("list", &prefix, e))?;
        let mut n = 0;
        for object in objects {
            let key = object.location;
            let rel = if s3.prefix.is_empty() {
                Some(key.as_ref())
            } else {
                key.as_ref().strip_prefix(s3.prefix.as_str()).and_then(|r| r.strip_prefix('/'))
            };
            let local = match rel.map(|rel| keys::local_path(scratch, rel)) {
                Some(Ok(local)) => local,
                Some(Err(e)) => {
                    tracing::warn!(key = %key, error = %e, "not restored: the key would leave the recording");
                    continue;
                }
                None => continue,
            };
            if local.exists() {
                continue;
            }
            if let Some(parent) = local.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            // Written aside and renamed: a broken download is not taken for a whole file.
            let mut partial = local.clone().into_os_string();
            partial.push(".download");
            let partial = PathBuf::from(partial);
            let mut file = tokio::fs::File::create(&partial).await?;
            let mut body = client.store.get(&key).await.map_err(|e| s3_error("get", &key, e))?.into_stream();
            while let Some(bytes) = body.next().await {
                file.write_all(&bytes.map_err(|e| s3_error("get", &key, e))?).await?;
            }
            file.sync_all().await?;
            tokio::fs::rename(&partial, &local).await?;
            n += 1;
        }
        Ok(n)
    }

    /// Stores `local` (a file under the work dir) where the recording lives.
    pub async fn store(&self, local: &Path) -> Result<(), StorageError> {
        let Storage::S3 { scratch, s3, client } = self else { return Ok(()) };
        let key = s3.key(&keys::key_of(scratch, local)?)?;
        let size = tokio::fs::metadata(local).await?.len();
        if size <= s3.part_size as u64 {
            let body = tokio::fs::read(local).await?;
            client.store.put(&key, PutPayload::from(body)).await.map_err(|e| s3_error("put", &key, e))?;
            return Ok(());
        }
        let upload = client.store.put_multipart(&key).await.map_err(|e| s3_error("multipart upload", &key, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, s3.part_size);
        match write_parts(&mut writer, local, &key).await {
            Ok(()) => {
                writer.finish().await.map_err(|e| s3_error("multipart upload", &key, e))?;
                Ok(())
            }
            Err(e) => {
                // Parts already stored would otherwise be kept (and billed) by the bucket.
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(key = %key, error = %abort, "could not abort the multipart upload");
                }
                Err(e)
            }
        }
    }

    /// Removes the whole recording (retention: Delete).
    pub async fn delete_all(&self) -> Result<(), StorageError> {
        match self {
            Storage::Volume { dir, .. } => match std::fs::remove_dir_all(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            },
            Storage::S3 { s3, client, .. } => {
                let prefix = s3.prefix_path();
                let listed = client.store.list(Some(&prefix)).map_ok(|o| o.location).boxed();
                let mut deleted = client.store.delete_stream(listed);
                while let Some(result) = deleted.next().await {
                    match result {
                        Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(s3_error("delete", &prefix, e)),
                    }
                }
                Ok(())
            }
        }
    }
}

/// object_store's reqwest client, except that a certificate it does not trust ends the
/// request at once: object_store retries connection errors, and no retry fixes that.
#[derive(Debug)]
struct UntrustedFailsFast;

impl HttpConnector for UntrustedFailsFast {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(FailFastService(ReqwestConnector::default().connect(options)?)))
    }
}

#[derive(Debug)]
struct FailFastService(HttpClient);

#[async_trait::async_trait]
impl HttpService for FailFastService {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        self.0.execute(req).await.map_err(|e| {
            if untrusted_certificate(&error_chain(&e)) { HttpError::new(HttpErrorKind::Unknown, e) } else { e }
        })
    }
}

/// How rustls says the peer's certificate failed verification.
fn untrusted_certificate(chain: &str) -> bool {
    chain.contains("invalid peer certificate")
}

async fn write_parts(writer: &mut WriteMultipart, local: &Path, key: &ObjectPath) -> Result<(), StorageError> {
    let mut file = tokio::fs::File::open(local).await?;
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        writer.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(|e| s3_error("multipart upload", key, e))?;
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        writer.write(&buf[..n]);
    }
}

/// A bucket name that stays one path segment (path-style) or DNS labels (virtual-host).
fn bucket_name(bucket: &str, addressing: Addressing) -> Result<(), StorageError> {
    keys::segment("S3 bucket", bucket)?;
    let dns = bucket
        .split('.')
        .all(|label| !label.is_empty() && !label.starts_with('-') && !label.ends_with('-') && !label.contains('_'));
    if addressing == Addressing::VirtualHost && !dns {
        return Err(StorageError::Config(format!(
            "bucket {bucket:?} is not a DNS name: use path-style addressing (RECORDER_S3_ADDRESSING=path)"
        )));
    }
    Ok(())
}

fn s3_error(op: &'static str, key: &ObjectPath, e: object_store::Error) -> StorageError {
    // The fail-fast wrapper nests one HTTP error in another: say it once.
    let mut detail = error_chain(&e).replace("HTTP error: HTTP error: ", "HTTP error: ");
    if untrusted_certificate(&detail) && detail.contains("UnknownIssuer") {
        detail.push_str(" (the endpoint's CA is not trusted: name its PEM file in RECORDER_S3_CA_FILE)");
    }
    StorageError::S3 { op, key: key.to_string(), detail }
}

/// An error with its sources, each said once (`object_store` errors wrap the transport's,
/// which wrap the TLS library's: the reason is at the end).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(endpoint: Option<&str>, addressing: Addressing) -> S3Config {
        let mut c = S3Config::new("meetings", "rec/ns/m/j", "AK", "SK");
        c.endpoint = endpoint.map(str::to_owned);
        c.addressing = addressing;
        c
    }

    #[test]
    fn volume_urls_name_the_file_inside_the_recording() {
        let s = Storage::Volume { dir: "/data/ns/m/j".into(), url: "pvc://recordings/meetings/ns/m/j".into() };
        assert_eq!(s.url("gallery.mp4"), "pvc://recordings/meetings/ns/m/j/gallery.mp4");
    }

    #[test]
    fn addressing_puts_the_bucket_in_the_path_or_the_host() {
        let path = s3(Some("https://minio.example:9000/"), Addressing::Path);
        assert_eq!(path.bucket_endpoint().unwrap().as_deref(), Some("https://minio.example:9000"));
        let host = s3(Some("https://minio.example:9000"), Addressing::VirtualHost);
        assert_eq!(host.bucket_endpoint().unwrap().as_deref(), Some("https://meetings.minio.example:9000"));
        assert_eq!(s3(None, Addressing::VirtualHost).bucket_endpoint().unwrap(), None);
        assert_eq!("path".parse(), Ok(Addressing::Path));
        assert_eq!("virtual-host".parse(), Ok(Addressing::VirtualHost));
        assert!("vhost".parse::<Addressing>().is_err());
    }

    #[test]
    fn keys_are_under_the_prefix_and_traversal_is_refused() {
        let c = s3(None, Addressing::Path);
        assert_eq!(c.key("tracks/alice/a.ogg").unwrap().as_ref(), "rec/ns/m/j/tracks/alice/a.ogg");
        for bad in ["../x", "a/../../b", "/etc/passwd", "%2e%2e/x", "tracks//a", "..%2f..%2fother"] {
            assert!(c.key(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_storage_refuses_a_prefix_or_bucket_that_leaves_its_place() {
        let scratch = PathBuf::from("/tmp/recorder/x");
        let mut c = s3(Some("http://127.0.0.1:9"), Addressing::Path);
        c.prefix = "rec/../../other".into();
        assert!(Storage::s3(scratch.clone(), c).is_err());
        let mut c = s3(Some("http://127.0.0.1:9"), Addressing::Path);
        c.bucket = "../other-bucket".into();
        assert!(Storage::s3(scratch.clone(), c).is_err());
        let mut c = s3(None, Addressing::VirtualHost);
        c.bucket = "under_score".into();
        let err = Storage::s3(scratch.clone(), c).unwrap_err().to_string();
        assert!(err.contains("path-style"), "{err}");
        assert!(Storage::s3(scratch, s3(Some("http://127.0.0.1:9"), Addressing::Path)).is_ok());
    }

    #[test]
    fn files_outside_the_scratch_directory_are_not_uploaded() {
        let scratch = std::env::temp_dir().join(format!("recorder-store-{}", std::process::id()));
        let storage = Storage::s3(scratch.clone(), s3(Some("http://127.0.0.1:9"), Addressing::Path)).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        for outside in [PathBuf::from("/etc/passwd"), scratch.join("../escape.txt")] {
            let err = rt.block_on(storage.store(&outside)).unwrap_err();
            assert!(matches!(err, StorageError::Key(_)), "{}: {err}", outside.display());
        }
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate_and_secrets_are_not_printed() {
        let dir = std::env::temp_dir().join(format!("recorder-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = s3(Some("https://127.0.0.1:9"), Addressing::Path);
        c.ca_file = Some(dir.join("missing.pem"));
        assert!(c.build(None).unwrap_err().to_string().contains("missing.pem"));
        std::fs::write(dir.join("empty.pem"), "not a certificate\n").unwrap();
        c.ca_file = Some(dir.join("empty.pem"));
        assert!(c.build(None).unwrap_err().to_string().contains("no PEM certificate"));
        c.session_token = Some("TOKEN".into());
        let shown = format!("{c:?}");
        assert!(!shown.contains("SK") && !shown.contains("TOKEN"), "{shown}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn error_chains_say_each_cause_once() {
        let inner = std::io::Error::other("invalid peer certificate: UnknownIssuer");
        let outer = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, inner);
        assert_eq!(error_chain(&outer), "invalid peer certificate: UnknownIssuer");
    }
}
