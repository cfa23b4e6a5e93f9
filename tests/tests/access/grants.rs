//! What admins and editors hand out through the API: share links, places,
//! customers, users, sessions, and tokens that end with their makers.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_links_open_one_dashboard_until_revoked_or_expired() {
    let pg = TestPostgres::start().await;
    let app = with_token(&pg).await;
    let port = app.http.port();
    let dir = tempfile::tempdir().unwrap();
    people_and_places(dir.path(), &pg);
    let ana = Who::of(&login(port, "ana", PASSWORD).await.unwrap());
    let edd = Who::of(&login(port, "edd", PASSWORD).await.unwrap());
    let wes = Who::of(&login(port, "wes", PASSWORD).await.unwrap());
    let shares = "/api/v1/tenants/acme/shares";

    // An editor shares within what they edit, for at most a year.
    let made = call(
        port,
        &edd,
        "POST",
        shares,
        Some(r#"{"dashboard": "sales", "place": "pl-west", "label": "landlord", "days": 7}"#),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.text);
    let link = Who::Bearer(made.json["token"].as_str().unwrap().to_owned());
    let id = made.json["share"]["id"].as_i64().unwrap();
    let expires =
        chrono::DateTime::parse_from_rfc3339(made.json["share"]["expires_at"].as_str().unwrap())
            .unwrap();
    let days = (expires.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_hours();
    assert!((167..=168).contains(&days), "7 days: {days} h");
    for (body, status, why) in [
        (
            r#"{"dashboard": "sales", "place": "pl-east"}"#,
            403,
            "outside the west",
        ),
        (r#"{"dashboard": "sales"}"#, 403, "the whole tenant"),
        (
            r#"{"dashboard": "sales", "place": "pl-west", "days": 400}"#,
            400,
            "longer than a year",
        ),
        (
            r#"{"dashboard": "<b>x</b>", "place": "pl-west"}"#,
            400,
            "a hostile id",
        ),
        (
            r#"{"dashboard": "sales", "place": "pl-nowhere"}"#,
            403,
            "no such place",
        ),
    ] {
        let a = call(port, &edd, "POST", shares, Some(body)).await;
        assert_eq!(a.status, status, "{why}: {}", a.text);
    }
    let a = call(
        port,
        &wes,
        "POST",
        shares,
        Some(r#"{"dashboard": "sales", "place": "pl-west"}"#),
    )
    .await;
    assert_eq!(a.status, 403, "a viewer shares nothing: {}", a.text);
    // The token is shown once: listed without it, to its maker and the admin.
    let token = made.json["token"].as_str().unwrap();
    for who in [&edd, &ana] {
        let a = call(port, who, "GET", shares, None).await;
        assert_eq!(a.json["shares"][0]["id"], id, "{}", a.text);
        assert!(!a.text.contains(token));
    }
    let theirs = call(port, &ana, "POST", shares, Some(r#"{"dashboard": "exec"}"#)).await;
    assert_eq!(theirs.status, 201, "{}", theirs.text);
    let a = call(port, &edd, "GET", shares, None).await;
    assert_eq!(
        a.json["shares"].as_array().unwrap().len(),
        1,
        "only their own: {}",
        a.text
    );
    let other_id = theirs.json["share"]["id"].as_i64().unwrap();
    let a = call(port, &edd, "DELETE", &format!("{shares}/{other_id}"), None).await;
    assert_eq!(a.status, 404, "not theirs to revoke: {}", a.text);

    // The link opens what it was made for, and nothing else.
    let a = call(port, &link, "GET", "/api/v1/share", None).await;
    assert_eq!(
        (
            a.status,
            &a.json["dashboard"],
            &a.json["scope"],
            &a.json["label"]
        ),
        (
            200,
            &serde_json::json!("sales"),
            &serde_json::json!("place:pl-west"),
            &serde_json::json!("landlord")
        ),
        "{}",
        a.text
    );
    let a = call(port, &link, "GET", "/api/v1/tenants/acme/devices", None).await;
    assert_eq!(a.status, 401, "{}", a.text);
    // Each view is in the audit log as the share.
    let views: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE actor_kind = 'share' AND actor = $1 AND tenant = 'acme'",
    )
    .bind(id.to_string())
    .fetch_one(&pg.pool)
    .await
    .unwrap();
    assert_eq!(views, 2);

    // Revoked: refused at once. Expired: refused too.
    let a = call(port, &edd, "DELETE", &format!("{shares}/{id}"), None).await;
    assert_eq!(a.status, 204);
    assert_eq!(
        call(port, &link, "GET", "/api/v1/share", None).await.status,
        401
    );
    let exec = Who::Bearer(theirs.json["token"].as_str().unwrap().to_owned());
    assert_eq!(
        call(port, &exec, "GET", "/api/v1/share", None).await.status,
        200
    );
    sqlx::query("UPDATE share_tokens SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(other_id)
        .execute(&pg.pool)
        .await
        .unwrap();
    assert_eq!(
        call(port, &exec, "GET", "/api/v1/share", None).await.status,
        401
    );

    // The command line makes, lists and revokes them as well.
    let d = dir.path();
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
            "--customer",
            "cu-one",
        ],
        "",
    );
    assert!(said.contains("customer cu-one"), "{said}");
    let listed = cli(d, &pg, &["share", "list", "--tenant", "acme"], "");
    assert!(
        listed.contains("fleet") && listed.contains("3 share links"),
        "{listed}"
    );
    let new_id = said.split_whitespace().nth(1).unwrap();
    cli(
        d,
        &pg,
        &["share", "revoke", "--tenant", "acme", "--id", new_id],
        "",
    );
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn places_customers_users_and_sessions_through_the_api() {
    let pg = TestPostgres::start().await;
    let app = with_token(&pg).await;
    let port = app.http.port();
    let dir = tempfile::tempdir().unwrap();
    people_and_places(dir.path(), &pg);
    let ana_s = login(port, "ana", PASSWORD).await.unwrap();
    let ana = Who::of(&ana_s);
    let edd = Who::of(&login(port, "edd", PASSWORD).await.unwrap());
    let places = "/api/v1/tenants/acme/places";

    // Places: under what one edits; a root needs the whole tenant.
    for (who, body, status) in [
        (
            &edd,
            r#"{"place": "st-1", "parent": "pl-west", "kind": "location"}"#,
            201,
        ),
        (&edd, r#"{"place": "st-2", "parent": "pl-east"}"#, 403),
        (&edd, r#"{"place": "st-3"}"#, 403),
        (&edd, r#"{"place": "st-1", "parent": "pl-west"}"#, 409),
        (&edd, r#"{"place": "a b", "parent": "pl-west"}"#, 400),
        (
            &ana,
            r#"{"place": "emea", "name": "EMEA", "kind": "region"}"#,
            201,
        ),
    ] {
        let a = call(port, who, "POST", places, Some(body)).await;
        assert_eq!(a.status, status, "{body}: {}", a.text);
    }
    let a = call(port, &edd, "GET", places, None).await;
    let seen: Vec<&str> = a.json["places"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["place"].as_str().unwrap())
        .collect();
    assert_eq!(seen, ["pl-west", "st-1"], "{}", a.text);

    // Customers: an editor of the whole tenant (or of that customer).
    let put = |c: &str| format!("/api/v1/tenants/acme/customers/{c}");
    let body = r#"{"name": "Franchise 4", "email": "owner@f4.example"}"#;
    assert_eq!(
        call(port, &edd, "PUT", &put("fr-4"), Some(body))
            .await
            .status,
        403
    );
    let a = call(port, &ana, "PUT", &put("fr-4"), Some(body)).await;
    assert_eq!(
        (a.status, &a.json["customer"]["email"]),
        (200, &serde_json::json!("owner@f4.example")),
        "{}",
        a.text
    );
    let bad = call(
        port,
        &ana,
        "PUT",
        &put("fr-4"),
        Some(r#"{"name": "x", "email": "nope"}"#),
    )
    .await;
    assert_eq!(bad.status, 400);

    // Users: an admin adds one with a role; it logs in and sees its scope.
    let users = "/api/v1/tenants/acme/users";
    let new = r#"{"login": "sam", "password": "another long password", "role": "viewer", "place": "pl-east"}"#;
    assert_eq!(call(port, &edd, "POST", users, Some(new)).await.status, 403);
    let a = call(port, &ana, "POST", users, Some(new)).await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(call(port, &ana, "POST", users, Some(new)).await.status, 409);
    let short = r#"{"login": "sue", "password": "short", "role": "viewer"}"#;
    assert_eq!(
        call(port, &ana, "POST", users, Some(short)).await.status,
        400
    );
    let sam = login(port, "sam", "another long password").await.unwrap();
    let a = call(port, &Who::of(&sam), "GET", places, None).await;
    assert_eq!(a.json["places"][0]["place"], "pl-east", "{}", a.text);

    // Sessions: a user lists theirs and ends one; an admin ends all of a
    // user's.
    let second = login(port, "ana", PASSWORD).await.unwrap();
    let a = call(port, &ana, "GET", "/api/v1/sessions", None).await;
    let list = a.json["sessions"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{}", a.text);
    assert!(!a.text.contains(ana_s.cookie.split('=').nth(1).unwrap()));
    let other = list.iter().find(|s| s["current"] == false).unwrap()["id"]
        .as_i64()
        .unwrap();
    let a = call(
        port,
        &ana,
        "DELETE",
        &format!("/api/v1/sessions/{other}"),
        None,
    )
    .await;
    assert_eq!(a.status, 204);
    assert_eq!(
        call(port, &Who::of(&second), "GET", "/api/v1/session", None)
            .await
            .status,
        401
    );
    assert_eq!(
        call(port, &ana, "GET", "/api/v1/session", None)
            .await
            .status,
        200
    );
    let a = call(
        port,
        &Who::of(&sam),
        "DELETE",
        &format!("/api/v1/sessions/{other}"),
        None,
    )
    .await;
    assert_eq!(a.status, 404, "not theirs");
    // Not someone another tenant also answers for.
    let d = dir.path();
    cli(
        d,
        &pg,
        &[
            "grant", "--login", "edd", "--tenant", "other", "--role", "viewer",
        ],
        "",
    );
    let a = call(
        port,
        &ana,
        "DELETE",
        "/api/v1/tenants/acme/users/edd/sessions",
        None,
    )
    .await;
    assert_eq!(a.status, 404, "{}", a.text);
    let a = call(
        port,
        &ana,
        "DELETE",
        "/api/v1/tenants/acme/users/sam/sessions",
        None,
    )
    .await;
    assert_eq!(
        (a.status, &a.json["ended"]),
        (200, &serde_json::json!(1)),
        "{}",
        a.text
    );
    assert_eq!(
        call(port, &Who::of(&sam), "GET", "/api/v1/session", None)
            .await
            .status,
        401
    );
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_ends_with_the_user_or_token_that_made_it() {
    let pg = TestPostgres::start().await;
    let app = with_token(&pg).await;
    let port = app.http.port();
    let dir = tempfile::tempdir().unwrap();
    people_and_places(dir.path(), &pg);
    let ana = Who::of(&login(port, "ana", PASSWORD).await.unwrap());
    let tokens = "/api/v1/tenants/acme/tokens";
    let devices = "/api/v1/tenants/acme/devices";
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let a = call(
        port,
        &ana,
        "POST",
        tokens,
        Some(&format!(
            r#"{{"name": "provisioner", "role": "admin", "expires_at": "{tomorrow}"}}"#
        )),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text);
    let provisioner = Who::Bearer(a.json["token"].as_str().unwrap().to_owned());
    // A token made by a token that expires tomorrow expires tomorrow too,
    // however long it asked for.
    for body in [
        r#"{"name": "feed", "role": "viewer"}"#,
        r#"{"name": "feed-2", "role": "viewer", "expires_at": "2099-01-01T00:00:00Z"}"#,
    ] {
        let made = call(port, &provisioner, "POST", tokens, Some(body)).await;
        assert_eq!(made.status, 201, "{}", made.text);
        let expires =
            chrono::DateTime::parse_from_rfc3339(made.json["expires_at"].as_str().unwrap())
                .unwrap();
        assert_eq!(
            expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            tomorrow,
            "{body}"
        );
    }
    let feed = call(
        port,
        &provisioner,
        "POST",
        tokens,
        Some(r#"{"name": "feed-3", "role": "viewer"}"#),
    )
    .await;
    let feed = Who::Bearer(feed.json["token"].as_str().unwrap().to_owned());
    let grandchild = call(
        port,
        &provisioner,
        "POST",
        tokens,
        Some(r#"{"name": "sub", "role": "admin"}"#),
    )
    .await;
    let sub = Who::Bearer(grandchild.json["token"].as_str().unwrap().to_owned());
    let made = call(
        port,
        &sub,
        "POST",
        tokens,
        Some(r#"{"name": "leaf", "role": "viewer"}"#),
    )
    .await;
    let leaf = Who::Bearer(made.json["token"].as_str().unwrap().to_owned());
    for who in [&feed, &sub, &leaf] {
        assert_eq!(call(port, who, "GET", devices, None).await.status, 200);
    }
    // A share link made by it ends with it too, and never outlives it.
    let shared = call(
        port,
        &provisioner,
        "POST",
        "/api/v1/tenants/acme/shares",
        Some(r#"{"dashboard": "fleet", "days": 300}"#),
    )
    .await;
    assert_eq!(shared.status, 201, "{}", shared.text);
    let until =
        chrono::DateTime::parse_from_rfc3339(shared.json["share"]["expires_at"].as_str().unwrap())
            .unwrap();
    assert_eq!(
        until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        tomorrow
    );
    let link = Who::Bearer(shared.json["token"].as_str().unwrap().to_owned());
    assert_eq!(
        call(port, &link, "GET", "/api/v1/share", None).await.status,
        200
    );
    // Revoking the maker stops what it made, and what that made.
    let a = call(port, &ana, "DELETE", &format!("{tokens}/provisioner"), None).await;
    assert_eq!(a.status, 204);
    for who in [&provisioner, &feed, &sub, &leaf] {
        assert_eq!(call(port, who, "GET", devices, None).await.status, 401);
    }
    assert_eq!(
        call(port, &link, "GET", "/api/v1/share", None).await.status,
        401
    );
    // A token made by a user stops when the user is disabled.
    let a = call(
        port,
        &ana,
        "POST",
        tokens,
        Some(r#"{"name": "anas", "role": "viewer"}"#),
    )
    .await;
    let anas = Who::Bearer(a.json["token"].as_str().unwrap().to_owned());
    assert_eq!(call(port, &anas, "GET", devices, None).await.status, 200);
    cli(dir.path(), &pg, &["user", "disable", "--login", "ana"], "");
    assert_eq!(call(port, &anas, "GET", devices, None).await.status, 401);
    app.stop().await.unwrap();
}
