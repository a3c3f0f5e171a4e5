//! The committed CRD YAML must be exactly what the Rust types generate.

/// Also the chart's CRD templates and `docs/crd-reference.md`.
#[test]
fn committed_crd_yaml_chart_templates_and_reference_match_the_rust_types() {
    for (path, want) in switchboard_crds::generated::files() {
        let have = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        assert!(
            have == want,
            "{} drifted from the Rust types: run `cargo run -p switchboard-crds --bin crdgen`",
            path.display()
        );
    }
}

#[test]
fn every_crd_has_status_conditions_printer_columns_and_short_names() {
    for (file, crd) in switchboard_crds::all() {
        let json = serde_json::to_value(&crd).unwrap();
        let version = &json["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1", "{file}");
        assert!(version["subresources"]["status"].is_object(), "{file}: status subresource");
        assert!(version["additionalPrinterColumns"].as_array().is_some_and(|c| c.len() >= 3), "{file}");
        assert!(json["spec"]["names"]["shortNames"].as_array().is_some_and(|s| !s.is_empty()), "{file}");
        let status = &version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
        assert!(status["observedGeneration"].is_object(), "{file}: observedGeneration");
        assert_eq!(status["conditions"]["x-kubernetes-list-type"], "map", "{file}: conditions list type");
    }
}

#[test]
fn sfu_pool_has_a_scale_subresource_with_a_selector() {
    let crd = serde_json::to_value(<switchboard_crds::SfuPool as kube::CustomResourceExt>::crd()).unwrap();
    let scale = &crd["spec"]["versions"][0]["subresources"]["scale"];
    assert_eq!(scale["specReplicasPath"], ".spec.replicas");
    assert_eq!(scale["statusReplicasPath"], ".status.replicas");
    assert_eq!(scale["labelSelectorPath"], ".status.selector");
}
