//! Catalog merging, prefixing, collisions and resource routing.

use std::sync::Arc;

use rmcp::model::{JsonObject, Prompt, Resource, ResourceTemplate, Tool};

use super::*;

fn tool(name: &str) -> Tool {
    Tool::new(name.to_owned(), "d", Arc::new(JsonObject::new()))
}

fn listing(upstream: &str, prefix: &str, tools: &[&str], resources: &[&str], templates: &[&str]) -> UpstreamListing {
    UpstreamListing {
        upstream: Arc::from(upstream),
        tool_prefix: prefix.to_owned(),
        tools: tools.iter().map(|t| tool(t)).collect(),
        prompts: vec![Prompt::new(format!("{upstream}_prompt"), Some("p"), None)],
        resources: resources.iter().map(|uri| Resource::new(*uri, *uri)).collect(),
        templates: templates.iter().map(|t| ResourceTemplate::new(*t, "t")).collect(),
        withheld_tools: Vec::new(),
    }
}

#[test]
fn tools_and_prompts_are_prefixed_and_routed() {
    let a = listing("a", "a__", &["read", "write"], &[], &[]);
    let b = listing("b", "", &["read2"], &[], &[]);
    let catalog = Catalog::build(&[&a, &b], true).unwrap();
    let names: Vec<&str> = catalog.tools().iter().map(|e| &*e.item.name).collect();
    assert_eq!(names, vec!["a__read", "a__write", "read2"]);
    let entry = catalog.tool("a__write").unwrap();
    assert_eq!((&*entry.upstream, entry.original.as_str()), ("a", "write"));
    assert!(catalog.tool("write").is_none());
    assert_eq!(&*catalog.prompt("a__a_prompt").unwrap().upstream, "a");
}

#[test]
fn collision_after_prefixing_names_both_upstreams() {
    let a = listing("alpha", "", &["search"], &[], &[]);
    let b = listing("beta", "", &["search"], &[], &[]);
    let error = Catalog::build(&[&a, &b], true).unwrap_err();
    assert_eq!((error.name.as_str(), &*error.first, &*error.second), ("search", "alpha", "beta"));
    assert!(error.to_string().contains("alpha") && error.to_string().contains("beta"));
    // Lenient (runtime) builds keep the first-configured upstream's tool.
    let catalog = Catalog::build(&[&a, &b], false).unwrap();
    assert_eq!(catalog.tools().len(), 1);
    assert_eq!(&*catalog.tool("search").unwrap().upstream, "alpha");
}

#[test]
fn a_prefix_can_make_names_collide_too() {
    let a = listing("a", "x_", &["y_z"], &[], &[]);
    let b = listing("b", "x_y_", &["z"], &[], &[]);
    assert!(Catalog::build(&[&a, &b], true).is_err());
}

#[test]
fn resources_route_to_the_lister_and_ambiguous_uris_to_nobody() {
    let a = listing("a", "a__", &[], &["file:///a.txt", "shared://x"], &[]);
    let b = listing("b", "b__", &[], &["file:///b.txt", "shared://x"], &[]);
    let catalog = Catalog::build(&[&a, &b], true).unwrap();
    assert_eq!(catalog.route_resource("file:///a.txt"), ResourceRoute::Upstream(Arc::from("a")));
    assert_eq!(catalog.route_resource("file:///b.txt"), ResourceRoute::Upstream(Arc::from("b")));
    assert_eq!(catalog.route_resource("shared://x"), ResourceRoute::Ambiguous);
    assert_eq!(catalog.route_resource("file:///c.txt"), ResourceRoute::Unknown);
    let listed: Vec<&str> = catalog.resources().iter().map(|e| e.item.uri.as_str()).collect();
    assert_eq!(listed, vec!["file:///a.txt", "file:///b.txt"]);
}

#[test]
fn templates_route_unlisted_uris_only_when_one_upstream_matches() {
    let a = listing("a", "a__", &[], &[], &["test://template/{id}/data"]);
    let b = listing("b", "b__", &[], &[], &["notes://{+path}", "test://template/{id}/{rest}"]);
    let catalog = Catalog::build(&[&a, &b], true).unwrap();
    assert_eq!(catalog.route_resource("notes://x/y"), ResourceRoute::Upstream(Arc::from("b")));
    assert_eq!(catalog.route_resource("test://template/1/data"), ResourceRoute::Ambiguous);
    assert_eq!(catalog.route_resource("test://template/1/other"), ResourceRoute::Upstream(Arc::from("b")));
    assert_eq!(catalog.route_resource("zzz://1"), ResourceRoute::Unknown);
}

#[test]
fn store_updates_one_upstream_and_keeps_order() {
    let store = CatalogStore::new(vec![Arc::from("a"), Arc::from("b")]);
    store.replace_all(vec![listing("b", "b__", &["t"], &[], &[]), listing("a", "a__", &["t"], &[], &[])], true).unwrap();
    let names: Vec<String> = store.current().tools().iter().map(|e| e.item.name.to_string()).collect();
    assert_eq!(names, vec!["a__t", "b__t"]);
    store.update(&Arc::from("a"), None);
    assert_eq!(store.current().tools().len(), 1);
    // A strict start-up collision leaves the store unchanged.
    let clash = vec![listing("a", "", &["t"], &[], &[]), listing("b", "", &["t"], &[], &[])];
    assert!(store.replace_all(clash, true).is_err());
    assert_eq!(store.current().tools().len(), 1);
}
