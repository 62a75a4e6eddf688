//! The CRD, every object the operator renders, the Helm chart and the
//! examples, checked against the real Kubernetes schemas (1.25, 1.30 and
//! the newest kubernetes-validate knows) by `scripts/validate-manifests`,
//! which `scripts/setup` installs. Offline: no cluster is needed.

use std::path::{Path, PathBuf};
use std::process::Command;

use nod_operator::crd::NodCluster;
use nod_operator::render::Shape;

fn repo() -> PathBuf {
    manifest_dir().join("..")
}

/// Runs the validator; returns (success, output).
fn validate(args: &[&str]) -> (bool, String) {
    let out = Command::new(repo().join("scripts/validate-manifests"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("scripts/validate-manifests runs (run scripts/setup first)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(
        out.status.code(),
        Some(2),
        "the validator could not run: {text}"
    );
    (out.status.success(), text)
}

fn example(name: &str) -> NodCluster {
    let text = std::fs::read_to_string(repo().join("examples").join(name)).unwrap();
    let mut nc: NodCluster = serde_yaml::from_str(&text).unwrap();
    nc.metadata
        .namespace
        .get_or_insert_with(|| "default".into());
    nc.metadata.uid = Some("5f1e8c2a-0000-4000-8000-000000000001".into());
    nc
}

fn write_docs(dir: &Path, name: &str, docs: &[serde_json::Value]) -> String {
    let mut text = String::new();
    for d in docs {
        text.push_str("---\n");
        text.push_str(&serde_yaml::to_string(d).unwrap());
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn the_committed_crd_is_the_generated_one() {
    let generated = nod_operator::crd_yaml();
    for path in [
        "crds/nod.io_nodclusters.yaml",
        "charts/nod-operator/crds/nod.io_nodclusters.yaml",
    ] {
        let committed = std::fs::read_to_string(repo().join(path)).unwrap_or_default();
        assert!(
            committed == generated,
            "{path} differs from the code: regenerate it with `scripts/gen-crd`"
        );
    }
}

#[test]
fn the_crd_passes_the_kubernetes_schemas() {
    let (ok, out) = validate(&[
        "k8s",
        "--k8s-version",
        "1.25,1.30,latest",
        "crds/nod.io_nodclusters.yaml",
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("CustomResourceDefinition/nodclusters.nod.io"),
        "{out}"
    );
}

#[test]
fn the_examples_match_the_crd() {
    let (ok, out) = validate(&[
        "cr",
        "--crd",
        "crds/nod.io_nodclusters.yaml",
        "examples/nodcluster.yaml",
        "examples/nodcluster-production.yaml",
        "examples/nodcluster-backup.yaml",
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("(3 ok"), "{out}");
}

#[test]
fn every_rendered_object_passes_the_kubernetes_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, name) in [
        "nodcluster.yaml",
        "nodcluster-production.yaml",
        "nodcluster-cert-manager.yaml",
        "nodcluster-backup.yaml",
    ]
    .iter()
    .enumerate()
    {
        let nc = example(name);
        let n = nc.spec.replicas;
        // As created, and halfway through a scale-down of a founded cluster.
        files.push(write_docs(
            dir.path(),
            &format!("{i}-full.yaml"),
            &nod_operator::render::all(&nc, &Shape::new(n), Some("nod-system")),
        ));
        files.push(write_docs(
            dir.path(),
            &format!("{i}-shrinking.yaml"),
            &nod_operator::render::all(
                &nc,
                &Shape {
                    replicas: n + 1,
                    founding: None,
                    claim: None,
                    force: None,
                },
                None,
            ),
        ));
    }
    let mut args = vec!["k8s", "--k8s-version", "1.25,1.30,latest"];
    args.extend(files.iter().map(String::as_str));
    let (ok, out) = validate(&args);
    assert!(ok, "{out}");
    for kind in [
        "StatefulSet/",
        "Service/",
        "PodDisruptionBudget/",
        "ServiceAccount/",
        "NetworkPolicy/",
        "Deployment/",
    ] {
        assert!(out.contains(kind), "{kind} was not checked: {out}");
    }
}

#[test]
fn the_validator_fails_a_broken_object() {
    // So the tests above can fail: a StatefulSet with a misspelt field and a
    // string where a port number goes.
    let dir = tempfile::tempdir().unwrap();
    let mut sts = serde_json::to_value(nod_operator::render::stateful_set(
        &example("nodcluster.yaml"),
        &Shape::new(3),
    ))
    .unwrap();
    sts["spec"]["replica"] = serde_json::json!(3);
    sts["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] =
        serde_json::json!("two");
    let f = write_docs(dir.path(), "broken.yaml", &[sts]);
    let (ok, out) = validate(&["k8s", &f]);
    assert!(!ok, "a broken StatefulSet passed: {out}");
    assert!(out.contains("replica"), "{out}");
}

#[test]
fn the_chart_lints_renders_and_validates() {
    let (ok, out) = validate(&[
        "chart",
        "--k8s-version",
        "1.25,1.30,latest",
        "charts/nod-operator",
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("Deployment/"), "{out}");
}

/// This package's folder. Read at run time (cargo test sets it), not baked in
/// at build time: a test binary reused from a build in another checkout of
/// the same target directory must still read this checkout.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
