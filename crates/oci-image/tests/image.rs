//! Images built without a container engine, inspected: the layout and its digests, the
//! config, the layer's files, reproducibility, skopeo's reading of the layout, and the
//! binaries run from nothing but the image's own files (its loader and libraries).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sha2::{Digest, Sha256};
use switchboard_oci_image::{ImageSpec, NONROOT, build, shared_libraries};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("oci-image-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let bytes = std::fs::read(layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))).unwrap();
    assert_eq!(format!("sha256:{:x}", Sha256::digest(&bytes)), digest, "a blob's name is its digest");
    bytes
}

struct Inspected {
    manifest_digest: String,
    /// The annotations of the manifest's entry in index.json.
    index_annotations: Value,
    config: Value,
    /// Layer entries: path → (mode, content).
    files: std::collections::BTreeMap<String, (u32, Vec<u8>)>,
}

/// Reads an image layout the way a registry client would, checking every digest and size.
fn inspect(layout: &Path) -> Inspected {
    let oci_layout: Value = serde_json::from_slice(&std::fs::read(layout.join("oci-layout")).unwrap()).unwrap();
    assert_eq!(oci_layout["imageLayoutVersion"], "1.0.0");
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    let entry = &index["manifests"][0];
    let manifest_digest = entry["digest"].as_str().unwrap().to_owned();
    let manifest_bytes = blob(layout, &manifest_digest);
    assert_eq!(entry["size"].as_u64().unwrap() as usize, manifest_bytes.len());
    let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();
    assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    let config_bytes = blob(layout, manifest["config"]["digest"].as_str().unwrap());
    assert_eq!(manifest["config"]["size"].as_u64().unwrap() as usize, config_bytes.len());
    let config: Value = serde_json::from_slice(&config_bytes).unwrap();
    let layer = &manifest["layers"][0];
    assert_eq!(layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
    let gz = blob(layout, layer["digest"].as_str().unwrap());
    assert_eq!(layer["size"].as_u64().unwrap() as usize, gz.len());
    let mut tar_bytes = Vec::new();
    flate2::read::GzDecoder::new(gz.as_slice()).read_to_end(&mut tar_bytes).unwrap();
    assert_eq!(
        config["rootfs"]["diff_ids"][0],
        format!("sha256:{:x}", Sha256::digest(&tar_bytes)),
        "diff_id is the uncompressed layer's digest"
    );
    let mut files = std::collections::BTreeMap::new();
    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().display().to_string();
        let mode = entry.header().mode().unwrap();
        assert_eq!(entry.header().mtime().unwrap(), 0, "{path}: fixed time");
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        files.insert(path, (mode, content));
    }
    Inspected { manifest_digest, index_annotations: entry["annotations"].clone(), config, files }
}

/// Unpacks the layer into `root`.
fn unpack(image: &Inspected, root: &Path) {
    for (path, (mode, content)) in &image.files {
        let target = root.join(path);
        if path.ends_with('/') {
            std::fs::create_dir_all(&target).unwrap();
            continue;
        }
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(&target, content).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
}

/// Unpacks the layer into `root` and runs `program` with the image's own loader and
/// libraries only (no host library cache, no host library paths).
fn run_from_image(
    image: &Inspected,
    root: &Path,
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    image_command(image, root, program, args, env).output().unwrap()
}

/// The command [`run_from_image`] runs.
fn image_command(image: &Inspected, root: &Path, program: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    unpack(image, root);
    let loader = image.files.keys().find(|p| p.contains("ld-linux")).expect("the image carries the ELF loader");
    let lib_dirs: std::collections::BTreeSet<String> = image
        .files
        .keys()
        .filter(|p| p.contains(".so"))
        .map(|p| root.join(p).parent().unwrap().display().to_string())
        .collect();
    let mut command = Command::new(root.join(loader));
    command
        .arg("--inhibit-cache")
        .args(["--library-path", &lib_dirs.into_iter().collect::<Vec<_>>().join(":")])
        .arg(root.join(program.trim_start_matches('/')))
        .args(args)
        .env_clear()
        .envs(env.iter().copied());
    command
}

#[test]
fn an_image_is_a_valid_reproducible_oci_layout_that_runs_from_its_own_files() {
    let tool = env!("CARGO_BIN_EXE_oci-image");
    let build_with_cli = |out: &Path| {
        let o = Command::new(tool)
            .args([
                "--name",
                "switchboard/oci-image",
                "--tag",
                "0.1.0",
                "--out",
                out.to_str().unwrap(),
                "--port",
                "8080/tcp",
            ])
            .args(["--env", "RUST_LOG=info", "--label", "org.opencontainers.image.source=switchboard", tool])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let (a, b) = (temp("a"), temp("b"));
    let printed = build_with_cli(&a);
    build_with_cli(&b);
    let image = inspect(&a);
    assert!(printed.contains(&image.manifest_digest), "the CLI prints the manifest digest: {printed}");
    assert_eq!(inspect(&b).manifest_digest, image.manifest_digest, "the same inputs give the same image");

    // skopeo finds the image by its tag, containerd's import names it by its full name.
    assert_eq!(image.index_annotations["org.opencontainers.image.ref.name"], "0.1.0");
    assert_eq!(image.index_annotations["io.containerd.image.name"], "docker.io/switchboard/oci-image:0.1.0");

    let config = &image.config["config"];
    assert_eq!(config["User"], format!("{NONROOT}:{NONROOT}"));
    assert_eq!(config["Entrypoint"], serde_json::json!(["/usr/local/bin/oci-image"]));
    assert!(config["Env"].as_array().unwrap().iter().any(|e| e == "RUST_LOG=info"));
    assert!(config["ExposedPorts"]["8080/tcp"].is_object());
    assert_eq!(config["Labels"]["org.opencontainers.image.source"], "switchboard");
    assert_eq!(image.config["architecture"], "amd64");

    let (mode, _) = &image.files["usr/local/bin/oci-image"];
    assert_eq!(mode & 0o777, 0o755);
    for lib in shared_libraries(Path::new(tool)).unwrap() {
        let key = lib.display().to_string().trim_start_matches('/').to_owned();
        assert!(image.files.contains_key(&key), "{key} is in the layer");
    }
    let passwd = String::from_utf8(image.files["etc/passwd"].1.clone()).unwrap();
    assert!(passwd.contains(&format!("nonroot:x:{NONROOT}:{NONROOT}")));
    assert_eq!(image.files["tmp/"].0 & 0o7777, 0o1777);

    // An independent reader of OCI layouts agrees.
    let skopeo = Command::new("skopeo")
        .args(["inspect", &format!("oci:{}:0.1.0", a.display())])
        .output()
        .expect("skopeo runs (Debian package skopeo; .ci/run installs it)");
    assert!(skopeo.status.success(), "{}", String::from_utf8_lossy(&skopeo.stderr));
    let seen: Value = serde_json::from_slice(&skopeo.stdout).unwrap();
    assert_eq!(seen["Digest"], image.manifest_digest.as_str());
    assert_eq!(seen["Layers"].as_array().unwrap().len(), 1);
    let config =
        Command::new("skopeo").args(["inspect", "--config", &format!("oci:{}:0.1.0", a.display())]).output().unwrap();
    let seen: Value = serde_json::from_slice(&config.stdout).unwrap();
    assert_eq!(seen["config"]["User"], format!("{NONROOT}:{NONROOT}"));
    assert_eq!(seen["config"]["Entrypoint"][0], "/usr/local/bin/oci-image");

    let out = run_from_image(&image, &temp("root"), "/usr/local/bin/oci-image", &["--help"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("usage: oci-image"));
    for dir in [a, b, temp("root")] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The signaling image, built from the workspace's signaling-pod binary (`./test` builds
/// it first), runs from its own files: it mints a token as the demo asks it to.
#[test]
fn the_signaling_image_runs_its_binary_from_the_image_files() {
    let binary = repo_root().join("target/debug/signaling-pod");
    assert!(binary.exists(), "target/debug/signaling-pod is missing: ./test builds it (cargo build -p signaling-pod)");
    let out = temp("signaling");
    let spec = ImageSpec {
        name: "switchboard/signaling-pod".into(),
        tag: "test".into(),
        binaries: vec![binary],
        exposed_ports: vec!["8080/tcp".into()],
        ..Default::default()
    };
    build(&spec, &out).unwrap();
    let image = inspect(&out);
    let run = run_from_image(
        &image,
        &temp("signaling-root"),
        "/usr/local/bin/signaling-pod",
        &["token", "alice", "60"],
        &[("SIGNALING_JWT_KEY", "0123456789abcdef0123")],
    );
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let token = String::from_utf8(run.stdout).unwrap();
    assert_eq!(token.trim().split('.').count(), 3, "a JWT: {token}");
    let _ = std::fs::remove_dir_all(out);
    let _ = std::fs::remove_dir_all(temp("signaling-root"));
}

/// The recorder image carries ffmpeg and ffprobe from the host with their libraries.
#[test]
fn ffmpeg_and_its_libraries_resolve_for_the_recorder_image() {
    for program in ["/usr/bin/ffmpeg", "/usr/bin/ffprobe"] {
        let libs = shared_libraries(Path::new(program)).expect("ffmpeg is installed (Debian package ffmpeg)");
        assert!(libs.iter().any(|l| l.display().to_string().contains("libavcodec")), "{program}: {libs:?}");
        assert!(libs.iter().all(|l| l.exists()));
    }
}

/// The pod sandbox image from a static pause binary: `/pause`, no libraries, named as
/// the kubelet asks containerd for it.
#[test]
fn a_static_binary_makes_the_pause_image() {
    let dir = temp("pause");
    std::fs::create_dir_all(&dir).unwrap();
    let pause = dir.join("pause");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pause.c");
    let cc = Command::new("cc")
        .args(["-Os", "-static", "-o"])
        .arg(&pause)
        .arg(&source)
        .output()
        .expect("a C compiler runs (Debian packages gcc and libc6-dev)");
    assert!(cc.status.success(), "{}", String::from_utf8_lossy(&cc.stderr));
    assert!(shared_libraries(&pause).unwrap().is_empty(), "a static binary needs no libraries");

    let layout = dir.join("layout");
    let o = Command::new(env!("CARGO_BIN_EXE_oci-image"))
        .args(["--name", "registry.k8s.io/pause", "--tag", "3.10", "--out", layout.to_str().unwrap(), "--bin-dir", "/"])
        .arg(&pause)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let image = inspect(&layout);
    assert_eq!(image.config["config"]["Entrypoint"], serde_json::json!(["/pause"]));
    assert_eq!(image.index_annotations["io.containerd.image.name"], "registry.k8s.io/pause:3.10");
    assert_eq!(image.files["pause"].0 & 0o777, 0o755);
    assert!(!image.files.keys().any(|f| f.contains(".so")), "no libraries: {:?}", image.files.keys());

    // It runs from the image's files alone and stops on SIGTERM.
    let root = dir.join("root");
    unpack(&image, &root);
    let mut child = Command::new(root.join("pause")).env_clear().spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(child.try_wait().unwrap().is_none(), "pause keeps running");
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    assert!(child.wait().unwrap().success(), "pause exits 0 on SIGTERM");
    let _ = std::fs::remove_dir_all(dir);
}

/// The redis image: the host's redis-server (Debian package redis-server) and its
/// libraries, the entrypoint alone; the pod's args configure it. It serves from the
/// image's files.
#[test]
fn the_redis_image_serves_from_its_own_files() {
    let redis = Path::new("/usr/bin/redis-server");
    assert!(redis.exists(), "redis-server is installed (Debian package redis-server)");
    let dir = temp("redis");
    let layout = dir.join("layout");
    let spec = ImageSpec {
        name: "switchboard/redis".into(),
        tag: "test".into(),
        host_programs: vec![redis.to_owned()],
        exposed_ports: vec!["6379/tcp".into()],
        ..Default::default()
    };
    build(&spec, &layout).unwrap();
    let image = inspect(&layout);
    let config = &image.config["config"];
    assert_eq!(config["Entrypoint"], serde_json::json!(["/usr/bin/redis-server"]));
    assert_eq!(config["User"], format!("{NONROOT}:{NONROOT}"));
    assert!(config["ExposedPorts"]["6379/tcp"].is_object());
    assert_eq!(image.index_annotations["io.containerd.image.name"], "docker.io/switchboard/redis:test");

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let args = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
    ];
    let mut server = image_command(&image, &dir.join("root"), "/usr/bin/redis-server", &args, &[])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let reply = loop {
        use std::io::Write;
        if let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            conn.write_all(b"PING\r\n").unwrap();
            let mut reply = [0u8; 7];
            conn.read_exact(&mut reply).unwrap();
            break reply;
        }
        assert!(server.try_wait().unwrap().is_none(), "redis-server exited");
        assert!(std::time::Instant::now() < deadline, "redis-server does not listen on {port}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(&reply, b"+PONG\r\n");
    let _ = std::fs::remove_dir_all(dir);
}
