//! One set of image names: every image the operator defaults to, the chart's values,
//! the examples and the docs name is one that `./images` builds (read from the
//! script's `--name … --tag …` pairs, at the workspace version from Cargo.toml), and
//! the pods the operator writes use them with `imagePullPolicy: IfNotPresent`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use switchboard_crds::{RecordingJob, SfuPool, SignalingPool};
use switchboard_operator::config::{DEFAULT_RECORDER_IMAGE, IMAGE_PULL_POLICY};
use switchboard_operator::{recording_job, sfu_pool, signaling_pool};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `version` of `[workspace.package]` in the workspace Cargo.toml.
fn workspace_version() -> String {
    let toml = read("Cargo.toml");
    let section = toml.split("[workspace.package]").nth(1).expect("Cargo.toml has [workspace.package]");
    let line =
        section.lines().find(|l| l.trim_start().starts_with("version")).expect("[workspace.package] has a version");
    line.split('"').nth(1).expect("version = \"…\"").to_owned()
}

/// `name:tag` of every image `./images` builds: each `--name NAME` of the script with
/// the `--tag` that follows it (`"$version"` is the workspace version). Ours are all
/// at `"$version"`; another image whose tag is a variable (the pause image's
/// `--pause-tag`) is left out.
fn built_images() -> BTreeSet<String> {
    let script = read("images");
    let version = workspace_version();
    let tokens: Vec<&str> = script
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split_whitespace())
        .map(|t| t.trim_matches('"'))
        .collect();
    let mut built = BTreeSet::new();
    for (i, token) in tokens.iter().enumerate() {
        if *token != "--name" {
            continue;
        }
        let name = tokens.get(i + 1).expect("--name has a value");
        let tag = match tokens.get(i + 2..i + 4) {
            Some(["--tag", tag]) => *tag,
            other => panic!("./images: --name {name} is not followed by --tag TAG but {other:?}"),
        };
        if name.starts_with("switchboard/") {
            assert_eq!(tag, "$version", "./images: {name} is tagged with the workspace version");
        }
        match tag {
            "$version" => built.insert(format!("{name}:{version}")),
            variable if variable.contains('$') => continue,
            literal => built.insert(format!("{name}:{literal}")),
        };
    }
    assert!(built.len() >= 5, "./images builds the operator, SFU, signaling, recorder and redis images: {built:?}");
    built
}

fn assert_built(built: &BTreeSet<String>, image: &str, whose: &str) {
    assert!(built.contains(image), "{whose}: {image} is not an image ./images builds ({built:?})");
}

#[test]
fn images_builds_every_pod_image_at_the_workspace_version() {
    let built = built_images();
    let version = workspace_version();
    for name in ["operator", "sfu-pod", "signaling-pod", "recorder-pod", "redis"] {
        assert_built(&built, &format!("switchboard/{name}:{version}"), "the images the chart and the tests run");
    }
}

#[test]
fn the_operators_default_images_are_built_and_used_if_present() {
    let built = built_images();
    assert_built(&built, signaling_pool::build::DEFAULT_IMAGE, "signaling_pool::build::DEFAULT_IMAGE");
    assert_built(&built, DEFAULT_RECORDER_IMAGE, "config::DEFAULT_RECORDER_IMAGE");
    assert_eq!(IMAGE_PULL_POLICY, "IfNotPresent");

    // A SignalingPool that names no image runs the default.
    let pool: SignalingPool = serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "SignalingPool",
        "metadata": {"name": "main", "namespace": "conf", "uid": "u-1"},
        "spec": {"publicUrl": "https://meet.example.com", "redis": {"urlSecretRef": {"name": "redis", "key": "url"}},
                 "auth": {"jwtSecretRef": {"name": "jwt", "key": "key"}}},
    }))
    .unwrap();
    let deployment =
        serde_json::to_value(signaling_pool::build::deployment(&signaling_pool::build::validate(&pool).unwrap(), true))
            .unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], signaling_pool::build::DEFAULT_IMAGE);
    assert_eq!(container["imagePullPolicy"], "IfNotPresent");

    // Recorder Jobs, for the example RecordingJob, with the operator's default image.
    let config = switchboard_operator::OperatorConfig::for_namespace("conferencing", "test");
    let mut rj: RecordingJob = example("recordingjob.yaml", "RecordingJob");
    rj.metadata.uid = Some("u-2".into());
    for delete_files in [false, true] {
        let job = serde_json::to_value(recording_job::build::recorder_job(
            &rj,
            &config.recorder_image,
            &config.recorder_placement,
            delete_files,
        ))
        .unwrap();
        let container = &job["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["image"], DEFAULT_RECORDER_IMAGE);
        assert_eq!(container["imagePullPolicy"], "IfNotPresent");
    }

    // SFU pods of the example pool: the template's image, pulled if not present unless
    // the template says otherwise.
    let mut pool: SfuPool = example("sfupool-eu-west.yaml", "SfuPool");
    pool.metadata.uid = Some("u-3".into());
    let sfu = |pool: &SfuPool| {
        let pod = serde_json::to_value(sfu_pool::build::sfu_pod(&sfu_pool::build::validate(pool).unwrap())).unwrap();
        pod["spec"]["containers"].as_array().unwrap().iter().find(|c| c["name"] == "sfu").cloned().unwrap()
    };
    assert_built(&built, sfu(&pool)["image"].as_str().unwrap(), "examples/sfupool-eu-west.yaml");
    assert_eq!(sfu(&pool)["imagePullPolicy"], "IfNotPresent");
    pool.spec.template.spec.as_mut().unwrap().containers[0].image_pull_policy = Some("Always".into());
    assert_eq!(sfu(&pool)["imagePullPolicy"], "Always", "a template's own pull policy wins");
}

/// The first document of `kind` in `examples/<file>`.
fn example<T: serde::de::DeserializeOwned>(file: &str, kind: &str) -> T {
    let docs: Vec<Value> = serde_saphyr::from_multiple(&read(&format!("examples/{file}"))).unwrap();
    let doc = docs.into_iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("examples/{file} has no {kind}"));
    serde_json::from_value(doc).unwrap()
}

/// Every `{repository, tag}` in the chart's values, the tag defaulting to appVersion.
#[test]
fn the_charts_images_are_built() {
    let built = built_images();
    let chart: Value = serde_saphyr::from_str(&read("charts/switchboard/Chart.yaml")).unwrap();
    let app_version = chart["appVersion"].as_str().expect("Chart.yaml has an appVersion");
    assert_eq!(app_version, workspace_version(), "the chart's appVersion is the workspace version, the images' tag");
    let values: Value = serde_saphyr::from_str(&read("charts/switchboard/values.yaml")).unwrap();
    let mut images = Vec::new();
    fn walk(path: &str, v: &Value, images: &mut Vec<(String, Value)>) {
        match v {
            Value::Object(map) if map.contains_key("repository") => images.push((path.to_owned(), v.clone())),
            Value::Object(map) => map.iter().for_each(|(k, v)| walk(&format!("{path}.{k}"), v, images)),
            Value::Array(items) => items.iter().enumerate().for_each(|(i, v)| walk(&format!("{path}[{i}]"), v, images)),
            _ => {}
        }
    }
    walk("", &values, &mut images);
    let paths: Vec<&str> = images.iter().map(|(p, _)| p.as_str()).collect();
    for expected in [".operator.image", ".recorder.image", ".defaultSfuPool.image", ".defaultSignalingPool.image"] {
        assert!(paths.contains(&expected), "values.yaml has {expected}: {paths:?}");
    }
    for (path, image) in images {
        let tag = image["tag"].as_str().filter(|t| !t.is_empty()).unwrap_or(app_version);
        assert_built(
            &built,
            &format!("{}:{tag}", image["repository"].as_str().unwrap()),
            &format!("values.yaml{path}"),
        );
    }
}

#[test]
fn the_examples_images_are_built() {
    let built = built_images();
    let mut found = 0;
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("image", Value::String(image)) => out.push(image.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(repo_root().join("examples")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for path in files.into_iter().filter(|p| p.extension().is_some_and(|e| e == "yaml")) {
        let docs: Vec<Value> = serde_saphyr::from_multiple(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut images = Vec::new();
        docs.iter().for_each(|d| walk(d, &mut images));
        for image in images {
            assert_built(&built, &image, &path.display().to_string());
            found += 1;
        }
    }
    assert!(found > 0, "the examples name at least one image (the SfuPool's)");
}

/// References `switchboard/NAME:TAG` or `switchboard-NAME:TAG` (the old style) in text.
fn image_references(text: &str) -> Vec<String> {
    let mut refs = Vec::new();
    let bytes = text.as_bytes();
    let name_char = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-';
    for (start, _) in text.match_indices("switchboard") {
        if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || matches!(bytes[start - 1], b'-' | b'_' | b'.')) {
            continue;
        }
        let mut i = start + "switchboard".len();
        if !matches!(bytes.get(i), Some(b'/' | b'-')) {
            continue;
        }
        i += 1;
        while bytes.get(i).is_some_and(|&c| name_char(c)) {
            i += 1;
        }
        if bytes.get(i) != Some(&b':') || !bytes.get(i + 1).is_some_and(|c| c.is_ascii_digit()) {
            continue;
        }
        let mut end = i + 1;
        while bytes.get(end).is_some_and(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_')) {
            end += 1;
        }
        refs.push(text[start..end].trim_end_matches('.').to_owned());
    }
    refs
}

#[test]
fn the_docs_name_built_images() {
    assert_eq!(
        image_references(
            "`switchboard/operator:0.1.0`, docker://r.example.com/switchboard/sfu-pod:0.1.0. switchboard-sfu:0.1.0 switchboard-signaling role, switchboard/x:<v>"
        ),
        ["switchboard/operator:0.1.0", "switchboard/sfu-pod:0.1.0", "switchboard-sfu:0.1.0"]
    );
    let built = built_images();
    let mut files = vec![repo_root().join("README.md"), repo_root().join("images")];
    for dir in ["docs", "charts/switchboard"] {
        files.extend(
            std::fs::read_dir(repo_root().join(dir))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "md" || e == "txt")),
        );
    }
    for dir in ["operator", "sfu-pod", "signaling-pod", "recorder-pod"] {
        files.push(repo_root().join(dir).join("Dockerfile"));
    }
    let mut found = 0;
    for path in files.into_iter().filter(|p| p.exists()) {
        for image in image_references(&std::fs::read_to_string(&path).unwrap()) {
            assert_built(&built, &image, &path.display().to_string());
            found += 1;
        }
    }
    assert!(found > 0, "the README and Dockerfiles name images");
}
