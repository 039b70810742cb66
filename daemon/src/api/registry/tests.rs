use super::*;

fn loader(budget_bytes: u64, models_dir: &Path) -> Loader {
    Loader {
        library: None,
        opts: ProviderOptions::default(),
        sched: SchedulerConfig {
            kv_budget_bytes: 1 << 20,
            prefix_cache_bytes: 0,
            ..SchedulerConfig::default()
        },
        models_dir: models_dir.to_path_buf(),
        budget_bytes,
    }
}

/// A directory that looks like a model to the budget (bytes of files) but not to the engine.
fn fake_model(root: &Path, name: &str, bytes: usize) -> PathBuf {
    let d = root.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("model.onnx.data"), vec![0u8; bytes]).unwrap();
    d
}

#[test]
fn requests_resolve_by_name_and_default_and_say_why_not() {
    let t = tempfile::tempdir().unwrap();
    let a = fake_model(t.path(), "a", 10);
    let b = fake_model(t.path(), "b", 10);
    let reg = Registry::new(
        vec![("a".into(), a), ("b".into(), b)],
        Some("b".into()),
        loader(0, t.path()),
    );
    assert_eq!(reg.default_name(), "b");
    assert_eq!(reg.canonical(DEFAULT_ALIAS), "b");
    let e = reg.resolve("nope").err().unwrap();
    assert_eq!((e.status.as_u16(), e.code), (404, Some("model_not_found")));
    // Known but not loaded: also 404 (this daemon does not serve it now), saying how to load.
    let e = reg.resolve(DEFAULT_ALIAS).err().unwrap();
    assert_eq!(e.status.as_u16(), 404);
    assert!(
        e.message.contains("edgeseek models load b"),
        "{}",
        e.message
    );
    reg.fail("a", "broken".into());
    let e = reg.resolve("a").err().unwrap();
    assert_eq!(e.status.as_u16(), 503);
    // Keyed callers learn the cause; the anonymous /readyz does not ask the registry for it.
    assert!(e.message.contains("broken"), "{}", e.message);
    let listed: Vec<_> = reg
        .list()
        .iter()
        .map(|m| (m.id.clone(), m.state, m.default))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("a".into(), "failed", false),
            ("b".into(), "unloaded", true)
        ]
    );
}

#[test]
fn a_load_over_the_budget_is_refused_naming_it_and_charges_nothing() {
    let t = tempfile::tempdir().unwrap();
    let big = fake_model(t.path(), "big", 3 << 20);
    let reg = Registry::new(vec![("big".into(), big)], None, loader(2 << 20, t.path()));
    match reg.load("big", false) {
        Err(e @ RegistryError::OverBudget { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("engine.memory_budget_mb") && msg.contains("2 MiB"),
                "{msg}"
            );
            let api = ApiError::from(e);
            assert_eq!((api.status.as_u16(), api.code), (409, Some("over_budget")));
        }
        other => panic!("{:?}", other.map(|m| m.state)),
    }
    assert_eq!(reg.used_bytes(), 0);
    assert_eq!(reg.list()[0].state, "unloaded");
}

#[test]
fn a_failed_load_gives_its_charge_back_and_records_the_cause() {
    let t = tempfile::tempdir().unwrap();
    let junk = fake_model(t.path(), "junk", 100);
    let reg = Registry::new(vec![], None, loader(0, t.path()));
    // By name under the models directory: not a model (no genai_config.json / config.json).
    match reg.load("junk", false) {
        Err(RegistryError::LoadFailed(name, _)) => assert_eq!(name, "junk"),
        other => panic!("{:?}", other.map(|m| m.state)),
    }
    let m = &reg.list()[0];
    assert_eq!(
        (m.id.as_str(), m.state, m.memory_bytes),
        ("junk", "failed", 0)
    );
    assert!(m.error.is_some());
    assert_eq!(m.dir, junk.to_string_lossy());
    // Neither a known name, nor under the models directory, nor a directory.
    assert!(matches!(
        reg.load("missing", false),
        Err(RegistryError::NotFound(..))
    ));
    assert!(matches!(
        reg.load("/no/such/dir", false),
        Err(RegistryError::NotFound(..))
    ));
}

#[test]
fn two_directories_with_one_name_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let a = fake_model(t.path(), "m", 10);
    let other = tempfile::tempdir().unwrap();
    let b = fake_model(other.path(), "m", 10);
    let reg = Registry::new(vec![("m".into(), a)], None, loader(0, t.path()));
    match reg.load(&b.to_string_lossy(), false) {
        Err(RegistryError::BadModel(msg)) => assert!(msg.contains("already known"), "{msg}"),
        other => panic!("{:?}", other.map(|m| m.state)),
    }
}

#[test]
fn a_pinned_model_cannot_be_unloaded_until_unpinned() {
    let t = tempfile::tempdir().unwrap();
    let a = fake_model(t.path(), "a", 10);
    let reg = Registry::new(vec![("a".into(), a)], None, loader(0, t.path()));
    assert!(reg.pin("a", true).unwrap().pinned);
    let e = reg.unload("a").err().unwrap();
    assert!(matches!(e, RegistryError::Pinned(_)));
    assert_eq!(ApiError::from(e).status.as_u16(), 409);
    assert!(!reg.pin("a", false).unwrap().pinned);
    assert_eq!(reg.unload("a").unwrap().state, "unloaded");
    assert!(matches!(
        reg.pin("zz", true),
        Err(RegistryError::NotFound(..))
    ));
}
