use super::*;

fn store(dir: &std::path::Path) -> AgentStore {
    AgentStore::open(Store::open_in(dir, crate::schema::MIGRATIONS).unwrap()).unwrap()
}

fn helpdesk() -> Agent {
    let mut a = Agent::named("helpdesk");
    a.instructions = "You are the IT helpdesk.".into();
    a.tools = vec![
        "kb_search".into(),
        "current_time".into(),
        "kb_search".into(),
    ];
    a.collections = vec!["it".into()];
    a
}

#[test]
fn create_update_delete_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = store(dir.path());
        let a = s.create(helpdesk()).unwrap();
        assert_eq!(
            a.tools,
            vec!["kb_search", "current_time"],
            "duplicates dropped"
        );
        assert!(a.created > 0 && a.updated == a.created);
        assert!(matches!(s.create(helpdesk()), Err(AgentError::Exists(_))));
        let patch: AgentPatch = serde_json::from_str(
            r#"{"description":"IT","max_steps":3,"temperature":0.2,"tools":["mcp:erp/*"]}"#,
        )
        .unwrap();
        let u = s.update("helpdesk", patch).unwrap();
        assert_eq!((u.max_steps, u.temperature), (3, Some(0.2)));
        assert_eq!(u.tools, vec!["mcp:erp/*"]);
        assert_eq!(
            u.instructions, "You are the IT helpdesk.",
            "absent fields stay"
        );
        // null clears an optional field
        let clear: AgentPatch = serde_json::from_str(r#"{"temperature":null}"#).unwrap();
        assert_eq!(s.update("helpdesk", clear).unwrap().temperature, None);
        let mut other = Agent::named("hr");
        other.max_steps = 1;
        s.create(other).unwrap();
    }
    let s = store(dir.path());
    let names: Vec<String> = s.list().iter().map(|a| a.name.clone()).collect();
    assert_eq!(names, vec!["helpdesk", "hr"]);
    let h = s.get("helpdesk").unwrap();
    assert_eq!((h.max_steps, h.description.as_str()), (3, "IT"));
    s.delete("hr").unwrap();
    assert!(matches!(s.delete("hr"), Err(AgentError::NotFound(_))));
    drop(s);
    assert!(
        store(dir.path()).get("hr").is_none(),
        "the delete was committed"
    );
}

#[test]
fn a_failed_update_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    s.create(helpdesk()).unwrap();
    let bad: AgentPatch = serde_json::from_str(r#"{"max_steps":0,"description":"x"}"#).unwrap();
    match s.update("helpdesk", bad) {
        Err(AgentError::Invalid { field, .. }) => assert_eq!(field, "max_steps"),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.get("helpdesk").unwrap().description, "");
    assert!(matches!(
        s.update("nobody", AgentPatch::default()),
        Err(AgentError::NotFound(_))
    ));
    assert!(
        serde_json::from_str::<AgentPatch>(r#"{"name":"x"}"#).is_err(),
        "name is fixed"
    );
}

#[test]
fn every_field_is_checked() {
    let field = |f: &dyn Fn(&mut Agent)| {
        let mut a = helpdesk();
        f(&mut a);
        match a.validate() {
            Err(AgentError::Invalid { field, .. }) => Some(field),
            Ok(()) => None,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(field(&|_| {}), None);
    assert_eq!(field(&|a| a.name = "a b".into()), Some("name"));
    assert_eq!(field(&|a| a.name = String::new()), Some("name"));
    assert_eq!(field(&|a| a.name = "客服".into()), None);
    assert_eq!(field(&|a| a.tools = vec!["rm_rf".into()]), Some("tools"));
    for ok in [
        "mcp:erp/lookup_order",
        "mcp:erp/*",
        "web_search",
        "fetch_url",
    ] {
        assert_eq!(field(&|a| a.tools = vec![ok.into()]), None, "{ok}");
    }
    for bad in ["mcp:erp", "mcp:/x", "mcp:erp/", "mcp:e p/x", "mcp:erp/a b"] {
        assert_eq!(
            field(&|a| a.tools = vec![bad.into()]),
            Some("tools"),
            "{bad}"
        );
    }
    assert_eq!(
        field(&|a| a.collections = vec!["a/b".into()]),
        Some("collections")
    );
    assert_eq!(field(&|a| a.max_steps = 17), Some("max_steps"));
    assert_eq!(field(&|a| a.max_steps = 16), None);
    assert_eq!(
        field(&|a| a.reasoning_budget = Some(0)),
        Some("reasoning_budget")
    );
    assert_eq!(field(&|a| a.temperature = Some(2.5)), Some("temperature"));
    assert_eq!(field(&|a| a.model = Some("agent:x".into())), Some("model"));
    assert_eq!(
        field(&|a| a.fetch_sites = vec!["ftp://x/".into()]),
        Some("fetch_sites")
    );
    assert_eq!(
        field(&|a| a.instructions = "x".repeat(32_001)),
        Some("instructions")
    );
}

#[test]
fn fetch_sites_limit_urls_by_prefix() {
    let mut a = helpdesk();
    assert!(a.may_fetch("https://anything.example/"));
    a.fetch_sites = vec!["https://wiki.corp.example/".into()];
    assert!(a.may_fetch("https://wiki.corp.example/vpn"));
    assert!(!a.may_fetch("https://wiki.corp.example.evil/"));
    assert!(!a.may_fetch("http://wiki.corp.example/"));
}
