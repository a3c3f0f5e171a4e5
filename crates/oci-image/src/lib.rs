//! Container images without a container engine: the binaries of an image, the shared
//! libraries they load (found with `ldd`), a non-root user and CA certificates go into
//! one layer, written with its config and manifest as an OCI image layout
//! (<https://github.com/opencontainers/image-spec/blob/main/image-layout.md>), which
//! `skopeo copy oci:DIR docker://…`, `podman load` or `crane push` can publish, and
//! `ctr images import` loads into containerd under the fully qualified name (see
//! [`containerd_name`]).
//!
//! The build is reproducible: entries are sorted, timestamps and owners fixed, gzip
//! headers carry no time, so the same inputs give the same digests.
//!
//! The Dockerfiles next to each binary build the same images with a container engine;
//! this crate is how they are built where there is none (CI, this repository's tests).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The user images run as (distroless's `nonroot`).
pub const NONROOT: u32 = 65532;

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// What goes into an image.
#[derive(Clone, Debug, Default)]
pub struct ImageSpec {
    /// e.g. `switchboard/operator`
    pub name: String,
    /// e.g. `0.1.0`
    pub tag: String,
    /// Host executables, installed as `<bin_dir>/<file name>`.
    pub binaries: Vec<PathBuf>,
    /// Where `binaries` go in the image; default `/usr/local/bin` (`/` for e.g. `/pause`).
    pub bin_dir: Option<String>,
    /// Further host executables installed at their host path with their libraries (e.g. `/usr/bin/ffmpeg`).
    pub host_programs: Vec<PathBuf>,
    /// `Entrypoint`; default: the first binary, else the first host program.
    pub entrypoint: Vec<String>,
    pub env: Vec<(String, String)>,
    /// e.g. `8080/tcp`
    pub exposed_ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// A built image: where its layout is and the digest of its manifest.
#[derive(Clone, Debug)]
pub struct Built {
    pub layout: PathBuf,
    pub manifest_digest: String,
    pub layer_files: usize,
    pub layer_bytes: u64,
}

/// The fully qualified form of an image reference, as containerd's CRI plugin looks
/// images up (Docker's normalization): `switchboard/sfu-pod:0.1.0` is
/// `docker.io/switchboard/sfu-pod:0.1.0`, `redis:7` is `docker.io/library/redis:7`, and a
/// name whose first component is a registry (`registry.k8s.io/pause:3.10`, `localhost:5000/x`)
/// is kept.
pub fn normalized_reference(reference: &str) -> String {
    let (first, rest) = match reference.split_once('/') {
        Some((first, rest)) => (first, Some(rest)),
        None => (reference, None),
    };
    match rest {
        Some(rest) if (first == "docker.io" || first == "index.docker.io") && !rest.contains('/') => {
            format!("docker.io/library/{rest}")
        }
        Some(rest) if first == "index.docker.io" => format!("docker.io/{rest}"),
        Some(_) if first.contains(['.', ':']) || first == "localhost" => reference.to_owned(),
        Some(_) => format!("docker.io/{reference}"),
        None => format!("docker.io/library/{reference}"),
    }
}

/// The `io.containerd.image.name` annotation of an image: `ctr images import` names the
/// image exactly so (it neither normalizes it nor adds a prefix; only a tag-only
/// `org.opencontainers.image.ref.name` gets `--base-name` or `import-<date>` put in
/// front), and the kubelet finds it by the normalized name. So it is the fully
/// qualified `name:tag`.
pub fn containerd_name(name: &str, tag: &str) -> String {
    normalized_reference(&format!("{name}:{tag}"))
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// The shared libraries `program` loads, and its ELF interpreter, as `ldd` resolves them.
pub fn shared_libraries(program: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(program).output().context("running ldd (Debian package libc-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // A static executable: nothing to add.
        if text.contains("not a dynamic executable")
            || String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!("ldd {}: {}", program.display(), String::from_utf8_lossy(&out.stderr));
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("not found") {
            bail!("{}: a library is missing on this host: {line}", program.display());
        }
        // `libx.so => /lib/x/libx.so (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next().unwrap_or(""),
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// The files of the layer: image path → content, with mode.
struct Layer {
    files: BTreeMap<String, (Vec<u8>, u32)>,
}

impl Layer {
    fn add_file(&mut self, image_path: &str, content: Vec<u8>, mode: u32) {
        self.files.insert(image_path.trim_start_matches('/').to_owned(), (content, mode));
    }

    fn add_host_file(&mut self, host: &Path, image_path: &str, mode: u32) -> anyhow::Result<()> {
        // Symlinks are resolved: the image holds the file under the name the loader asks for.
        let content = std::fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        self.add_file(image_path, content, mode);
        Ok(())
    }

    /// The uncompressed tar: parent directories first, everything sorted, fixed times and owners.
    fn tar(&self) -> anyhow::Result<Vec<u8>> {
        let mut dirs = std::collections::BTreeSet::new();
        for path in self.files.keys() {
            let mut p = Path::new(path).parent();
            while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
                dirs.insert(format!("{}/", d.display()));
                p = d.parent();
            }
        }
        dirs.insert("tmp/".into());
        // Owned by root, at time 0: nothing of the build host leaks into the digest.
        let header = |kind: tar::EntryType, mode: u32, size: u64| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(size);
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            h
        };
        let mut builder = tar::Builder::new(Vec::new());
        for dir in &dirs {
            let mode = if dir == "tmp/" { 0o1777 } else { 0o755 };
            builder.append_data(&mut header(tar::EntryType::Directory, mode, 0), dir, std::io::empty())?;
        }
        for (path, (content, mode)) in &self.files {
            builder.append_data(
                &mut header(tar::EntryType::Regular, *mode, content.len() as u64),
                path,
                content.as_slice(),
            )?;
        }
        Ok(builder.into_inner()?)
    }
}

fn write_blob(layout: &Path, bytes: &[u8]) -> anyhow::Result<(String, usize)> {
    let digest = sha256(bytes);
    let path = layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok((digest, bytes.len()))
}

/// Builds `spec` into an OCI image layout at `layout` (replaced if it exists).
pub fn build(spec: &ImageSpec, layout: &Path) -> anyhow::Result<Built> {
    if spec.binaries.is_empty() && spec.host_programs.is_empty() {
        bail!("an image needs at least one binary or host program");
    }
    let mut layer = Layer { files: BTreeMap::new() };
    let mut programs: Vec<(PathBuf, String)> = Vec::new();
    let bin_dir = spec.bin_dir.as_deref().unwrap_or("/usr/local/bin").trim_end_matches('/');
    if !bin_dir.is_empty() && !bin_dir.starts_with('/') {
        bail!("the binaries' directory must be absolute, got {bin_dir}");
    }
    for b in &spec.binaries {
        let name = b.file_name().context("a binary has a file name")?.to_string_lossy().into_owned();
        programs.push((b.clone(), format!("{bin_dir}/{name}")));
    }
    for p in &spec.host_programs {
        programs.push((p.clone(), p.display().to_string()));
    }
    for (host, image_path) in &programs {
        layer.add_host_file(host, image_path, 0o755)?;
        for lib in shared_libraries(host)? {
            layer.add_host_file(&lib, &lib.display().to_string(), 0o755)?;
        }
    }
    layer.add_file(
        "/etc/passwd",
        format!(
            "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n"
        )
        .into_bytes(),
        0o644,
    );
    layer.add_file("/etc/group", format!("root:x:0:\nnonroot:x:{NONROOT}:\n").into_bytes(), 0o644);
    layer.add_file("/etc/nsswitch.conf", b"hosts: files dns\n".to_vec(), 0o644);
    // TLS to the API server uses the ServiceAccount's CA; S3 and other endpoints need the public roots.
    let certs = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if certs.exists() {
        layer.add_host_file(certs, "/etc/ssl/certs/ca-certificates.crt", 0o644)?;
    }

    let tar = layer.tar()?;
    let diff_id = sha256(&tar);
    let mut gz = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar)?;
    let gz = gz.finish()?;

    if layout.exists() {
        std::fs::remove_dir_all(layout).with_context(|| format!("removing {}", layout.display()))?;
    }
    std::fs::create_dir_all(layout.join("blobs/sha256"))?;
    std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let (layer_digest, layer_size) = write_blob(layout, &gz)?;

    let entrypoint = if spec.entrypoint.is_empty() { vec![programs[0].1.clone()] } else { spec.entrypoint.clone() };
    let mut env = vec![
        "PATH=/usr/local/bin:/usr/bin:/bin".to_owned(),
        "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt".to_owned(),
    ];
    env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
    let ports: serde_json::Map<String, Value> = spec.exposed_ports.iter().map(|p| (p.clone(), json!({}))).collect();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": format!("{NONROOT}:{NONROOT}"),
            "Entrypoint": entrypoint,
            "Env": env,
            "WorkingDir": "/",
            "ExposedPorts": ports,
            "Labels": spec.labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{
            "created_by": "switchboard oci-image",
            "comment": "binaries, their shared libraries, nonroot user, CA certificates",
        }],
    });
    let (config_digest, config_size) = write_blob(layout, serde_json::to_vec(&config)?.as_slice())?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": layer_digest, "size": layer_size}],
        "annotations": {"org.opencontainers.image.title": spec.name, "org.opencontainers.image.version": spec.tag},
    });
    let (manifest_digest, manifest_size) = write_blob(layout, serde_json::to_vec(&manifest)?.as_slice())?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [{
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            // The tag for `skopeo copy oci:DIR:TAG`; the full name for `ctr images import`.
            "annotations": {
                "org.opencontainers.image.ref.name": spec.tag,
                "io.containerd.image.name": containerd_name(&spec.name, &spec.tag),
            },
        }],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec_pretty(&index)?)?;
    Ok(Built {
        layout: layout.to_owned(),
        manifest_digest,
        layer_files: layer.files.len(),
        layer_bytes: gz.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_normalized_as_containerd_looks_them_up() {
        assert_eq!(containerd_name("switchboard/sfu-pod", "0.1.0"), "docker.io/switchboard/sfu-pod:0.1.0");
        assert_eq!(containerd_name("redis", "7"), "docker.io/library/redis:7");
        assert_eq!(containerd_name("registry.k8s.io/pause", "3.10"), "registry.k8s.io/pause:3.10");
        assert_eq!(containerd_name("docker.io/switchboard/operator", "0.1.0"), "docker.io/switchboard/operator:0.1.0");
        assert_eq!(containerd_name("docker.io/redis", "7"), "docker.io/library/redis:7");
        assert_eq!(containerd_name("localhost/x", "1"), "localhost/x:1");
        assert_eq!(containerd_name("localhost:5000/x", "1"), "localhost:5000/x:1");
    }
}
