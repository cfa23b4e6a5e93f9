//! The audit log: append-only, hash-chained (keyed or not), cut by
//! retention, and what a request gets when its row cannot be stored.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_refuses_changes_and_its_chain_shows_an_edited_or_removed_row() {
    let pg = TestPostgres::start().await;
    let app = with_token(&pg).await;
    let port = app.http.port();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let t = Who::Bearer("acme-token".into());
    for _ in 0..10 {
        assert_eq!(
            call(port, &t, "GET", "/api/v1/tenants/acme/devices", None)
                .await
                .status,
            200
        );
    }
    assert_eq!(audit_rows(&pg).await, 10);
    assert!(cli(d, &pg, &["audit", "verify"], "").contains("intact: 10 rows"));
    // The database refuses to change or remove a row...
    for sql in [
        "UPDATE audit_log SET actor = 'someone else' WHERE seq = 4",
        "DELETE FROM audit_log WHERE seq = 4",
        "TRUNCATE audit_log",
    ] {
        let err = sqlx::query(sql).execute(&pg.pool).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    // ... and whoever gets past that (the owner can drop the trigger) is
    // caught by the chain.
    sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        .execute(&pg.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET actor = 'someone else' WHERE seq = 4")
        .execute(&pg.pool)
        .await
        .unwrap();
    let broken = dash_aggregator::storage::audit::verify(&pg.pool, None, None)
        .await
        .unwrap();
    assert_eq!(broken.broken.as_ref().map(|b| b.0), Some(4), "{broken:?}");
    assert!(broken.broken.unwrap().1.contains("changed"));
    sqlx::query("UPDATE audit_log SET actor = 'http.tokens' WHERE seq = 4")
        .execute(&pg.pool)
        .await
        .unwrap();
    assert_eq!(
        dash_aggregator::storage::audit::verify(&pg.pool, None, None)
            .await
            .unwrap()
            .broken,
        None
    );
    sqlx::query("DELETE FROM audit_log WHERE seq = 7")
        .execute(&pg.pool)
        .await
        .unwrap();
    let broken = dash_aggregator::storage::audit::verify(&pg.pool, None, None)
        .await
        .unwrap();
    assert_eq!(broken.broken.as_ref().map(|b| b.0), Some(8), "{broken:?}");
    assert!(broken.broken.unwrap().1.contains("missing"));
    let out = dash_tests::process::aggregator_command(d, &pg.url)
        .args(["audit", "verify"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "verify fails on a broken chain");
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken at row 8"));
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_cuts_the_oldest_rows_and_the_chain_goes_on_from_there() {
    let pg = TestPostgres::start().await;
    let app = with_token(&pg).await;
    let port = app.http.port();
    let t = Who::Bearer("acme-token".into());
    for _ in 0..5 {
        call(port, &t, "GET", "/api/v1/tenants/acme/places", None).await;
    }
    let cut_at = chrono::Utc::now();
    for _ in 0..3 {
        call(port, &t, "GET", "/api/v1/tenants/acme/places", None).await;
    }
    // A replica whose clock is behind writes a row stamped before the cut:
    // the chain's order decides what goes, not the stamps.
    let late = dash_aggregator::storage::audit::Entry {
        at: cut_at - chrono::Duration::hours(1),
        actor_kind: "bootstrap".into(),
        actor: "http.tokens".into(),
        tenant: Some("acme".into()),
        action: "read".into(),
        object: "/api/v1/tenants/acme/places".into(),
        scope: "tenant".into(),
        client: None,
        user_agent: None,
        outcome: "ok".into(),
        status: 200,
    };
    dash_aggregator::storage::audit::append(&pg.pool, &[late], None)
        .await
        .unwrap();
    let gone = dash_aggregator::storage::audit::cut(&pg.pool, cut_at)
        .await
        .unwrap();
    assert_eq!(gone, 5, "only the rows before the first one kept");
    call(port, &t, "GET", "/api/v1/tenants/acme/places", None).await;
    let v = dash_aggregator::storage::audit::verify(&pg.pool, None, None)
        .await
        .unwrap();
    assert_eq!(
        (v.rows, v.first, v.last, v.broken),
        (5, Some(6), Some(10), None)
    );
    // The tenant is logged as the route decoded it, not as it was spelled.
    let a = call(port, &t, "GET", "/api/v1/tenants/ac%6De/places", None).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let tenant: Option<String> =
        sqlx::query_scalar("SELECT tenant FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_one(&pg.pool)
            .await
            .unwrap();
    assert_eq!(tenant.as_deref(), Some("acme"));
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_the_audit_log_cannot_record_is_not_answered_and_a_change_says_so() {
    let pg = TestPostgres::start().await;
    let app = with_token(&pg).await;
    let port = app.http.port();
    let dir = tempfile::tempdir().unwrap();
    people_and_places(dir.path(), &pg);
    let ana = Who::of(&login(port, "ana", PASSWORD).await.unwrap());
    sqlx::raw_sql(
        "CREATE FUNCTION test_refuse_audit() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'audit storage is down (test)'; END $$;
         CREATE TRIGGER test_refuse_audit BEFORE INSERT ON audit_log
             FOR EACH ROW EXECUTE FUNCTION test_refuse_audit();",
    )
    .execute(&pg.pool)
    .await
    .unwrap();
    let read = call(port, &ana, "GET", "/api/v1/tenants/acme/places", None).await;
    assert_eq!(read.status, 503, "{}", read.text);
    assert!(
        !read.text.contains("pl-west"),
        "nothing of the answer: {}",
        read.text
    );
    assert!(!read.text.contains("test)"), "no SQL error: {}", read.text);
    let change = call(
        port,
        &ana,
        "POST",
        "/api/v1/tenants/acme/places",
        Some(r#"{"place": "st-9", "parent": "pl-west"}"#),
    )
    .await;
    assert_eq!(change.status, 201, "the change happened: {}", change.text);
    assert_eq!(change.header("x-dash-audit"), Some("not-recorded"));
    sqlx::raw_sql("DROP TRIGGER test_refuse_audit ON audit_log")
        .execute(&pg.pool)
        .await
        .unwrap();
    let read = call(port, &ana, "GET", "/api/v1/tenants/acme/places", None).await;
    assert_eq!(read.status, 200);
    assert!(read.text.contains("st-9"));
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_chain_cannot_be_rebuilt_without_its_key_and_a_noted_head_catches_a_rewrite() {
    use dash_aggregator::storage::audit::{self, ChainKey};
    let pg = TestPostgres::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("audit.key");
    std::fs::write(&key_file, "k3y-for-the-test-with-more-than-32-bytes\n").unwrap();
    let app = TestApp::spawn(&pg.url, |c| {
        c.audit.key_file = key_file.clone();
        c.http.tokens = vec![QueryToken {
            tenant: "acme".into(),
            sha256: dash_runtime::secret::sha256_hex("acme-token"),
        }];
    })
    .await;
    let port = app.http.port();
    let t = Who::Bearer("acme-token".into());
    for _ in 0..6 {
        call(port, &t, "GET", "/api/v1/tenants/acme/places", None).await;
    }
    let key = ChainKey::new(b"k3y-for-the-test-with-more-than-32-bytes".to_vec()).unwrap();
    let v = audit::verify(&pg.pool, Some(&key), None).await.unwrap();
    assert_eq!((v.rows, v.keyed, &v.broken), (6, 6, &None));
    let head = v.head.clone().unwrap();
    // The command line, with the config naming the key, says so and
    // prints the head to keep.
    let config = dir.path().join("dash.toml");
    std::fs::write(
        &config,
        format!("[audit]\nkey_file = {:?}\n", key_file.display().to_string()),
    )
    .unwrap();
    let verify = |args: &[&str]| {
        dash_tests::process::aggregator_command(dir.path(), &pg.url)
            .args(args)
            .output()
            .unwrap()
    };
    let out = verify(&["audit", "verify", "--config", config.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!("6 chained with key {}", key.id)),
        "{said}"
    );
    assert!(said.contains(&format!("head 6:{head}")), "{said}");
    // Without the key, or with another, nothing can be vouched for.
    let out = verify(&["audit", "verify"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("verify with the config that names audit.key_file")
    );
    let other = ChainKey::new(vec![7; 40]).unwrap();
    let v = audit::verify(&pg.pool, Some(&other), None).await.unwrap();
    assert!(v.broken.unwrap().1.contains("not this one"));

    // The database's owner edits row 3 and rebuilds the chain from there
    // as plain SHA-256 (the key is not theirs): caught.
    sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        .execute(&pg.pool)
        .await
        .unwrap();
    let rows: Vec<audit::Row> = sqlx::query_as(
        "SELECT seq, at, actor_kind, actor, tenant, action, object, scope, client, user_agent,
                outcome, status, prev_hash, hash, key_id FROM audit_log ORDER BY seq",
    )
    .fetch_all(&pg.pool)
    .await
    .unwrap();
    let mut prev = rows[1].hash.clone();
    for mut row in rows.into_iter().skip(2) {
        if row.seq == 3 {
            row.entry.actor = "someone else".into();
        }
        let hash = audit::chain_hash(row.seq, &row.entry, &prev);
        sqlx::query("UPDATE audit_log SET actor = $2, prev_hash = $3, hash = $4, key_id = NULL WHERE seq = $1")
            .bind(row.seq)
            .bind(&row.entry.actor)
            .bind(&prev)
            .bind(&hash)
            .execute(&pg.pool)
            .await
            .unwrap();
        prev = hash;
    }
    let v = audit::verify(&pg.pool, Some(&key), None).await.unwrap();
    let (seq, why) = v.broken.unwrap();
    assert_eq!(seq, 3, "{why}");
    assert!(why.contains("unkeyed row after keyed ones"), "{why}");
    // Even rebuilt from the very first row, the noted head catches it.
    sqlx::query("UPDATE audit_log SET key_id = NULL")
        .execute(&pg.pool)
        .await
        .unwrap();
    let mut prev = audit::GENESIS.to_owned();
    let rows: Vec<audit::Row> = sqlx::query_as(
        "SELECT seq, at, actor_kind, actor, tenant, action, object, scope, client, user_agent,
                outcome, status, prev_hash, hash, key_id FROM audit_log ORDER BY seq",
    )
    .fetch_all(&pg.pool)
    .await
    .unwrap();
    for row in rows {
        let hash = audit::chain_hash(row.seq, &row.entry, &prev);
        sqlx::query("UPDATE audit_log SET prev_hash = $2, hash = $3 WHERE seq = $1")
            .bind(row.seq)
            .bind(&prev)
            .bind(&hash)
            .execute(&pg.pool)
            .await
            .unwrap();
        prev = hash;
    }
    assert_eq!(
        audit::verify(&pg.pool, None, None).await.unwrap().broken,
        None,
        "it looks whole"
    );
    // ... but not to the key's holder: every row should be keyed.
    let v = audit::verify(&pg.pool, Some(&key), None).await.unwrap();
    let (seq, why) = v.broken.unwrap();
    assert_eq!(seq, 1, "{why}");
    assert!(why.contains("audit.keyed_from"), "{why}");
    let v = audit::verify(&pg.pool, None, Some((6, &head)))
        .await
        .unwrap();
    assert!(v.broken.unwrap().1.contains("rewritten"));
    let out = verify(&["audit", "verify", "--expect", &format!("6:{head}")]);
    assert!(!out.status.success());
    app.stop().await.unwrap();
}
