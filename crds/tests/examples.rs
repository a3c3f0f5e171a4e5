//! Every YAML in `examples/` parses into its typed resource, and no field of it is
//! lost on the way (a misspelt field would otherwise be dropped silently).

use serde_json::Value;
use switchboard_crds::{Meeting, RecordingJob, SfuPool, SignalingPool};

fn examples() -> Vec<(String, Value)> {
    let dir = switchboard_crds::yaml_dir().join("../examples");
    let mut docs = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for path in files.into_iter().filter(|p| p.extension().is_some_and(|e| e == "yaml")) {
        let text = std::fs::read_to_string(&path).unwrap();
        let parsed: Vec<Value> =
            serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        docs.extend(parsed.into_iter().filter(|d| !d.is_null()).map(|d| (name.clone(), d)));
    }
    docs
}

/// Round-trips through the typed resource and returns the result as JSON.
fn typed_round_trip(file: &str, doc: &Value) -> Value {
    fn via<T: serde::de::DeserializeOwned + serde::Serialize>(file: &str, doc: &Value) -> Value {
        let typed: T = serde_json::from_value(doc.clone())
            .unwrap_or_else(|e| panic!("{file}: does not parse as {}: {e}", std::any::type_name::<T>()));
        serde_json::to_value(typed).unwrap()
    }
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
    match doc["kind"].as_str().unwrap_or_default() {
        "SfuPool" => via::<SfuPool>(file, doc),
        "SignalingPool" => via::<SignalingPool>(file, doc),
        "Meeting" => via::<Meeting>(file, doc),
        "RecordingJob" => via::<RecordingJob>(file, doc),
        "Namespace" => via::<Namespace>(file, doc),
        "Secret" => via::<Secret>(file, doc),
        "Service" => via::<Service>(file, doc),
        "Deployment" => via::<Deployment>(file, doc),
        other => panic!("{file}: unexpected kind {other:?} in examples"),
    }
}

/// Every leaf of `want` is in `have` with the same value (`have` may add defaults).
fn assert_contained(file: &str, path: &str, want: &Value, have: &Value) {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => {
            for (k, v) in w {
                let child = format!("{path}.{k}");
                let got = h.get(k).unwrap_or_else(|| panic!("{file}: field {child} was dropped (misspelt?)"));
                assert_contained(file, &child, v, got);
            }
        }
        (Value::Array(w), Value::Array(h)) => {
            assert_eq!(w.len(), h.len(), "{file}: {path} changed length");
            for (i, (a, b)) in w.iter().zip(h).enumerate() {
                assert_contained(file, &format!("{path}[{i}]"), a, b);
            }
        }
        // Quantities such as cpu: "4" are kept as strings; numbers may come back as floats.
        (Value::Number(a), Value::Number(b)) => assert_eq!(a.as_f64(), b.as_f64(), "{file}: {path}"),
        _ => assert_eq!(want, have, "{file}: {path} changed"),
    }
}

#[test]
fn every_example_parses_into_its_typed_resource_without_losing_fields() {
    let docs = examples();
    for (file, doc) in &docs {
        let round_trip = typed_round_trip(file, doc);
        // Secrets' stringData is write-only on the wire; k8s-openapi keeps it, so it is compared too.
        assert_contained(file, "", doc, &round_trip);
    }
    let kinds: std::collections::BTreeSet<&str> = docs.iter().filter_map(|(_, d)| d["kind"].as_str()).collect();
    for kind in ["SfuPool", "SignalingPool", "Meeting", "RecordingJob"] {
        assert!(kinds.contains(kind), "examples/ has no {kind}");
    }
}

#[test]
fn the_scheduled_webinar_example_is_large_and_scheduled() {
    let docs = examples();
    let webinar = docs
        .iter()
        .filter(|(_, d)| d["kind"] == "Meeting")
        .map(|(_, d)| serde_json::from_value::<Meeting>(d.clone()).unwrap())
        .find(|m| m.spec.schedule.is_some() && m.spec.participants.expected >= 800)
        .expect("an example of a scheduled meeting of 800 or more");
    assert_eq!(webinar.spec.mode, switchboard_crds::meeting::MeetingMode::Webinar);
}

#[test]
fn a_misspelt_field_is_caught() {
    // The containment check itself must be able to fail.
    let doc: Value = serde_json::json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "Meeting",
        "metadata": {"name": "x"},
        "spec": {"title": "t", "host": "h", "participants": {"expected": 2}, "waitngRoom": true}
    });
    let round_trip = typed_round_trip("inline", &doc);
    let result = std::panic::catch_unwind(|| assert_contained("inline", "", &doc, &round_trip));
    assert!(result.is_err(), "a misspelt field must be reported");
}
