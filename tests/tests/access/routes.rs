//! Every route of the router, each caller kind against it: only its scope,
//! and the OpenAPI document that describes them.

use super::*;

/// The path of `route` with its parameters filled for `device`.
fn path_of(route: &str, device: &str) -> String {
    let p = route
        .replace("{tenant}", "acme")
        .replace("{device}", device)
        .replace("{id}", "999999")
        .replace("{name}", "no-such-token")
        .replace("{login}", "no-such-user")
        .replace("{customer}", "cu-new");
    if p.ends_with("/query") {
        format!("{p}?from=2025-01-01T00:00:00Z&to=2027-01-01T00:00:00Z&step=1d")
    } else {
        p
    }
}

/// A body each write route accepts, for `device`'s caller.
fn body_of(route: &str) -> Option<&'static str> {
    if route.ends_with("/devices/{device}") {
        Some(r#"{"firmware": "2.0.0"}"#)
    } else if route.ends_with("/bindings") {
        Some(r#"{"login": "wes", "role": "viewer", "place": "pl-west"}"#)
    } else if route.ends_with("/tokens") {
        Some(r#"{"name": "made-by-test", "role": "viewer", "place": "pl-west"}"#)
    } else if route.ends_with("/users") {
        Some(
            r#"{"login": "made-by-test", "password": "a long enough password", "role": "viewer", "place": "pl-west"}"#,
        )
    } else if route.ends_with("/places") {
        Some(r#"{"place": "pl-made", "parent": "pl-west"}"#)
    } else if route.ends_with("/customers/{customer}") {
        Some(r#"{"name": "Made by the test"}"#)
    } else if route.ends_with("/shares") {
        Some(r#"{"dashboard": "fleet", "place": "pl-west"}"#)
    } else {
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_only_within_the_callers_scope() {
    let pg = TestPostgres::start().await;
    let app = TestApp::spawn(&pg.url, |c| {
        c.http.tokens = vec![QueryToken {
            tenant: "other".into(),
            sha256: dash_runtime::secret::sha256_hex("other-tenant-token"),
        }];
    })
    .await;
    let port = app.http.port();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // Readings for three devices, then where they are and whose.
    // Ingest as the aggregator does, noting each device's agent.
    let tracker = std::sync::Arc::new(dash_aggregator::fleet::tracker::Tracker::default());
    let ing = pg.ingestor().with_fleet(tracker.clone());
    let (acme, gw) = (TenantId::new("acme").unwrap(), AgentId::new("gw").unwrap());
    let now = chrono::Utc::now().timestamp_micros();
    for (seq, device) in ["w-dev", "e-dev", "c1-dev"].iter().enumerate() {
        let p = dash_tests::fixture::payload_with_events(
            seq as u64 + 1,
            vec![SeriesBlock {
                key: SeriesKey::new(*device, "temp"),
                timestamps: vec![now - 60_000_000],
                values: vec![1.0],
            }],
            vec![dash_tests::fixture::sale(device, now - 30_000_000)],
        );
        let d = [Delivery {
            tenant: &acme,
            agent: &gw,
            payload: &p,
        }];
        ing.handle_group(&d).await.unwrap();
    }
    dash_aggregator::storage::fleet::record_seen(&pg.pool, &tracker.take())
        .await
        .unwrap();
    for args in [
        &["place", "add", "--tenant", "acme", "--id", "pl-corp"][..],
        &[
            "place", "add", "--tenant", "acme", "--id", "pl-west", "--parent", "pl-corp",
        ],
        &[
            "place", "add", "--tenant", "acme", "--id", "pl-east", "--parent", "pl-corp",
        ],
        &[
            "place",
            "add",
            "--tenant",
            "acme",
            "--id",
            "pl-wstore",
            "--parent",
            "pl-west",
        ],
        &[
            "place",
            "add",
            "--tenant",
            "acme",
            "--id",
            "pl-estore",
            "--parent",
            "pl-east",
        ],
        &[
            "customer", "add", "--tenant", "acme", "--id", "cu-one", "--name", "One",
        ],
        &[
            "customer", "add", "--tenant", "acme", "--id", "cu-two", "--name", "Two",
        ],
    ] {
        cli(d, &pg, args, "");
    }
    let csv = d.join("devices.csv");
    std::fs::write(
        &csv,
        "device,place,customer\nw-dev,pl-wstore,\ne-dev,pl-estore,cu-two\nc1-dev,pl-estore,cu-one\n",
    )
    .unwrap();
    cli(
        d,
        &pg,
        &[
            "device",
            "import",
            "--tenant",
            "acme",
            csv.to_str().unwrap(),
        ],
        "",
    );

    // People: an admin, a region viewer, a customer's user, an editor of
    // the west; a region token.
    for login in ["ana", "wes", "cus", "edd"] {
        cli(
            d,
            &pg,
            &["user", "add", "--login", login, "--password-stdin"],
            &format!("{PASSWORD}\n"),
        );
    }
    cli(
        d,
        &pg,
        &[
            "grant", "--login", "ana", "--tenant", "acme", "--role", "admin",
        ],
        "",
    );
    cli(
        d,
        &pg,
        &[
            "grant", "--login", "wes", "--tenant", "acme", "--role", "viewer", "--place", "pl-west",
        ],
        "",
    );
    cli(
        d,
        &pg,
        &[
            "grant",
            "--login",
            "cus",
            "--tenant",
            "acme",
            "--role",
            "viewer",
            "--customer",
            "cu-one",
        ],
        "",
    );
    cli(
        d,
        &pg,
        &[
            "grant", "--login", "edd", "--tenant", "acme", "--role", "editor", "--place", "pl-west",
        ],
        "",
    );
    let said = cli(
        d,
        &pg,
        &[
            "token",
            "add",
            "--tenant",
            "acme",
            "--name",
            "west-feed",
            "--place",
            "pl-west",
        ],
        "",
    );
    let west_token = said
        .split(": ")
        .nth(1)
        .unwrap()
        .split('\n')
        .next()
        .unwrap()
        .trim()
        .to_owned();
    let said = cli(
        d,
        &pg,
        &[
            "share",
            "add",
            "--tenant",
            "acme",
            "--dashboard",
            "fleet",
            "--place",
            "pl-west",
            "--label",
            "for the west's landlord",
        ],
        "",
    );
    let share_token = said
        .lines()
        .next()
        .and_then(|l| l.rsplit(": ").next())
        .unwrap()
        .trim()
        .to_owned();
    let listed = cli(d, &pg, &["user", "list"], "");
    assert!(
        listed.contains("viewer in acme (place pl-west)"),
        "{listed}"
    );

    let ana = Who::of(&login(port, "ana", PASSWORD).await.unwrap());
    let wes = Who::of(&login(port, "wes", PASSWORD).await.unwrap());
    let cus = Who::of(&login(port, "cus", PASSWORD).await.unwrap());
    let edd = Who::of(&login(port, "edd", PASSWORD).await.unwrap());
    let token = Who::Bearer(west_token);
    let other = Who::Bearer("other-tenant-token".into());
    let share = Who::Bearer(share_token);

    // Each scoped caller: the device they may name, and what must never
    // appear in anything they are answered.
    let scoped: Vec<(&str, &Who, &str, Vec<&str>)> = vec![
        (
            "region viewer",
            &wes,
            "w-dev",
            vec![
                "e-dev",
                "c1-dev",
                "pl-estore",
                "pl-east",
                "cu-one",
                "cu-two",
            ],
        ),
        (
            "region token",
            &token,
            "w-dev",
            vec![
                "e-dev",
                "c1-dev",
                "pl-estore",
                "pl-east",
                "cu-one",
                "cu-two",
            ],
        ),
        (
            "customer's user",
            &cus,
            "c1-dev",
            vec!["w-dev", "e-dev", "pl-wstore", "pl-west", "cu-two"],
        ),
    ];
    let all = routes();
    assert!(all.len() >= 28, "the route list: {}", all.len());
    let mut checked = 0;
    for route in &all {
        let method = route.method.as_str();
        let body = body_of(route.path);
        match route.access {
            Access::Public => continue,
            Access::Caller => {
                let path = path_of(route.path, "w-dev");
                for (who, name) in [(&Who::Nobody, "no credentials"), (&share, "a share link")] {
                    let a = call(port, who, method, &path, body).await;
                    assert_eq!(a.status, 401, "{method} {path} with {name}: {}", a.text);
                }
                checked += 1;
                continue;
            }
            Access::Share => {
                // Only a share link's token, and it is told only what it opens.
                for (who, name) in [
                    (&Who::Nobody, "no credentials"),
                    (&ana, "the tenant's admin"),
                    (&token, "an API token"),
                ] {
                    let a = call(port, who, method, route.path, body).await;
                    assert_eq!(
                        a.status, 401,
                        "{method} {} with {name}: {}",
                        route.path, a.text
                    );
                }
                let a = call(port, &share, method, route.path, body).await;
                assert_eq!(
                    (a.status, &a.json["dashboard"], &a.json["scope"]),
                    (
                        200,
                        &serde_json::json!("fleet"),
                        &serde_json::json!("place:pl-west")
                    ),
                    "{}",
                    a.text
                );
                checked += 1;
                continue;
            }
            Access::Tenant(_) => {}
        }
        let path = path_of(route.path, "w-dev");
        for (who, name) in [
            (&Who::Nobody, "no credentials"),
            (&other, "another tenant's token"),
            (&share, "a share link (it opens its dashboard only)"),
        ] {
            let a = call(port, who, method, &path, body).await;
            assert_eq!(a.status, 401, "{method} {path} with {name}: {}", a.text);
        }
        // Another tenant's device path says the same as a device that does
        // not exist: nothing about whether it does.
        for (who_name, who, own, hidden) in &scoped {
            let path = path_of(route.path, own);
            let a = call(port, who, method, &path, body).await;
            let Access::Tenant(needs) = route.access else {
                unreachable!()
            };
            if needs > Role::Viewer {
                assert_eq!(
                    a.status, 403,
                    "{who_name}: {method} {path} is refused: {}",
                    a.text
                );
            } else {
                assert_eq!(a.status, 200, "{who_name}: {method} {path}: {}", a.text);
            }
            for h in hidden {
                assert!(
                    !a.text.contains(h),
                    "{who_name}: {method} {path} shows {h}: {}",
                    a.text
                );
            }
            if route.path.contains("{device}") && method == "GET" {
                let theirs = call(port, who, method, &path_of(route.path, hidden[0]), body).await;
                let nothing = call(
                    port,
                    who,
                    method,
                    &path_of(route.path, "no-such-device"),
                    body,
                )
                .await;
                assert_eq!(
                    (theirs.status, &theirs.json),
                    (404, &nothing.json),
                    "{who_name}: {method} {}",
                    route.path
                );
            }
        }
        // The tenant-wide admin is answered by every route (a 404 for the
        // made-up binding and token ids).
        let a = call(port, &ana, method, &path, body).await;
        assert!(
            matches!(a.status, 200 | 201 | 204 | 404),
            "admin: {method} {path}: {} {}",
            a.status,
            a.text
        );
        checked += 1;
    }
    assert_eq!(
        checked,
        all.iter().filter(|r| r.access != Access::Public).count()
    );

    // The series of a region viewer: its own device's only.
    let a = call(port, &wes, "GET", "/api/v1/tenants/acme/series", None).await;
    let devices: Vec<&str> = a.json["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["device"].as_str().unwrap())
        .collect();
    assert_eq!(devices, ["w-dev"]);
    let a = call(port, &ana, "GET", "/api/v1/tenants/acme/series", None).await;
    assert_eq!(a.json["series"].as_array().unwrap().len(), 3);
    // And its events and agents: its own device's, and the gateway that
    // serves it.
    let a = call(port, &wes, "GET", "/api/v1/tenants/acme/events", None).await;
    let sources: Vec<&str> = a.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["w-dev"], "{}", a.text);
    let a = call(port, &ana, "GET", "/api/v1/tenants/acme/events", None).await;
    assert_eq!(a.json["events"].as_array().unwrap().len(), 3, "{}", a.text);
    let a = call(port, &cus, "GET", "/api/v1/tenants/acme/agents", None).await;
    assert_eq!(
        (
            &a.json["agents"][0]["agent"],
            &a.json["agents"][0]["devices"]
        ),
        (&serde_json::json!("gw"), &serde_json::json!(1)),
        "{}",
        a.text
    );

    // An editor of the west changes a west device, but cannot move it east
    // or touch an east one.
    let put = |dev: &str| format!("/api/v1/tenants/acme/devices/{dev}");
    let a = call(
        port,
        &edd,
        "PUT",
        &put("w-dev"),
        Some(r#"{"model": "th-10"}"#),
    )
    .await;
    assert_eq!(
        (a.status, &a.json["device"]["model"]),
        (200, &serde_json::json!("th-10")),
        "{}",
        a.text
    );
    let a = call(
        port,
        &edd,
        "PUT",
        &put("w-dev"),
        Some(r#"{"place": "pl-estore"}"#),
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.text);
    let a = call(
        port,
        &edd,
        "PUT",
        &put("w-dev"),
        Some(r#"{"customer": "cu-two"}"#),
    )
    .await;
    assert_eq!(
        a.status, 403,
        "a place editor hands a device to no customer: {}",
        a.text
    );
    let a = call(port, &edd, "PUT", &put("e-dev"), Some(r#"{"model": "x"}"#)).await;
    assert_eq!(a.status, 404, "{}", a.text);
    // ... nor grant beyond the west, nor anything as an editor.
    let a = call(
        port,
        &edd,
        "POST",
        "/api/v1/tenants/acme/bindings",
        Some(r#"{"login": "cus", "role": "viewer"}"#),
    )
    .await;
    assert_eq!(a.status, 403);

    // Every one of those requests wrote exactly one audit row, and the
    // chain holds.
    let made = REQUESTS.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(audit_rows(&pg).await, made, "one row per request");
    let said = cli(d, &pg, &["audit", "verify"], "");
    assert!(
        said.contains(&format!("audit log intact: {made} rows")),
        "{said}"
    );
    // Who, what, in which scope, and how it ended.
    let row: (String, String, String, String, String) = sqlx::query_as(
        "SELECT actor, action, object, scope, outcome FROM audit_log
         WHERE actor_kind = 'user' AND actor = 'edd' AND action = 'update' ORDER BY seq LIMIT 1",
    )
    .fetch_one(&pg.pool)
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            "edd".to_owned(),
            "update".to_owned(),
            "/api/v1/tenants/acme/devices/w-dev".to_owned(),
            "place:pl-west".to_owned(),
            "ok".to_owned()
        )
    );
    let denied: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE actor_kind = 'anonymous' AND outcome = 'denied' AND status = 401",
    )
    .fetch_one(&pg.pool)
    .await
    .unwrap();
    assert!(denied > 0);
    let export = cli(d, &pg, &["audit", "export", "--tenant", "acme"], "");
    assert!(
        export.starts_with("seq,at,actor_kind") && export.contains(",user,edd,acme,update,"),
        "{export}"
    );
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route() {
    let pg = TestPostgres::start().await;
    let app = with_token(&pg).await;
    let a = http(app.http.port(), "GET", "/api/v1/openapi.json", &[], None).await;
    assert_eq!(a.status, 200);
    let doc = &a.json;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc, &dash_aggregator::api::http::openapi());
    let mut ids = std::collections::HashSet::new();
    for route in routes() {
        let method = route.method.as_str().to_ascii_lowercase();
        let op = &doc["paths"][route.path][&method];
        assert_eq!(op["summary"], route.summary, "{method} {}", route.path);
        assert!(ids.insert(op["operationId"].as_str().unwrap().to_owned()));
        // Every {parameter} of the path is declared, and nothing else.
        let declared: Vec<&str> = op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        let in_path: Vec<&str> = route
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        assert_eq!(declared, in_path, "{}", route.path);
        let public = route.access == Access::Public;
        assert_eq!(op["security"].as_array().unwrap().is_empty(), public);
        assert_eq!(op["responses"]["401"].is_null(), public, "{}", route.path);
    }
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    assert_eq!(operations, routes().len(), "nothing more than the routes");
    app.stop().await.unwrap();
}
