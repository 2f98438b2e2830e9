//! The `cargo fuzz` targets' seed corpora (`fuzz/corpus/<target>/`), run on stable through the
//! same entry points the fuzzer calls (`trackproxy::fuzz_api`): every committed input, and
//! every crash the fuzzer found and was fixed for, must go through without a panic or a failed
//! invariant. `scripts/fuzz` runs the fuzzer itself.

use std::path::Path;

use trackproxy::fuzz_api::TARGETS;

#[test]
fn every_corpus_input_runs_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut dirs: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    dirs.sort();
    let mut names: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    names.sort_unstable();
    assert_eq!(dirs, names, "one corpus directory per fuzz target");
    for (name, run) in TARGETS {
        let mut inputs = 0;
        for entry in std::fs::read_dir(root.join(name)).unwrap() {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{name}: {} panicked", path.display());
            inputs += 1;
        }
        assert!(inputs >= 3, "{name}: only {inputs} seed inputs");
    }
}

#[test]
fn every_target_has_a_cargo_fuzz_binary() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    for (name, _) in TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] {name}"
        );
        assert!(root.join(format!("fuzz_targets/{name}.rs")).is_file());
    }
}
