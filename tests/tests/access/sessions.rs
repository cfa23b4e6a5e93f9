//! Sessions: CSRF, lockout, logout, and guesses sent in parallel.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_need_their_csrf_token_lock_out_guessers_and_end_at_logout() {
    let pg = TestPostgres::start().await;
    let app = TestApp::spawn(&pg.url, |c| {
        c.http.login_attempts = 3;
        c.http.lockout_secs = 600;
    })
    .await;
    let port = app.http.port();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    cli(
        d,
        &pg,
        &["user", "add", "--login", "ana", "--password-stdin"],
        &format!("{PASSWORD}\n"),
    );
    cli(
        d,
        &pg,
        &[
            "grant", "--login", "ana", "--tenant", "acme", "--role", "admin",
        ],
        "",
    );

    // The cookie: HttpOnly, SameSite, Secure only behind TLS.
    let body = serde_json::json!({ "login": "ana", "password": PASSWORD }).to_string();
    let plain = http(port, "POST", "/api/v1/login", &[], Some(&body)).await;
    let cookie = plain.header("set-cookie").unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains("Secure"), "{cookie}");
    let proxied = http(
        port,
        "POST",
        "/api/v1/login",
        &[("X-Forwarded-Proto", "https")],
        Some(&body),
    )
    .await;
    assert!(proxied.header("set-cookie").unwrap().contains("; Secure"));
    assert!(!plain.text.contains(PASSWORD));

    let s = login(port, "ana", PASSWORD).await.unwrap();
    let me = call(port, &Who::of(&s), "GET", "/api/v1/session", None).await;
    assert_eq!(
        (me.status, &me.json["login"]),
        (200, &serde_json::json!("ana"))
    );
    assert_eq!(me.json["csrf_token"], s.csrf.as_str());
    // A state-changing request of a session needs its CSRF token.
    let add = r#"{"name": "t1", "role": "viewer"}"#;
    let no_csrf = http(
        port,
        "POST",
        "/api/v1/tenants/acme/tokens",
        &[("Cookie", &s.cookie)],
        Some(add),
    )
    .await;
    assert_eq!(no_csrf.status, 403, "{}", no_csrf.text);
    let wrong = http(
        port,
        "POST",
        "/api/v1/tenants/acme/tokens",
        &[("Cookie", &s.cookie), ("X-CSRF-Token", "0123")],
        Some(add),
    )
    .await;
    assert_eq!(wrong.status, 403);
    let made = call(
        port,
        &Who::of(&s),
        "POST",
        "/api/v1/tenants/acme/tokens",
        Some(add),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.text);
    let token = made.json["token"].as_str().unwrap().to_owned();
    // The token works, is listed without its secret, and stops at revocation.
    let t = Who::Bearer(token.clone());
    assert_eq!(
        call(port, &t, "GET", "/api/v1/tenants/acme/devices", None)
            .await
            .status,
        200
    );
    let list = call(
        port,
        &Who::of(&s),
        "GET",
        "/api/v1/tenants/acme/tokens",
        None,
    )
    .await;
    assert!(
        list.text.contains("\"t1\"") && !list.text.contains(&token),
        "{}",
        list.text
    );
    let gone = call(
        port,
        &Who::of(&s),
        "DELETE",
        "/api/v1/tenants/acme/tokens/t1",
        None,
    )
    .await;
    assert_eq!(gone.status, 204);
    assert_eq!(
        call(port, &t, "GET", "/api/v1/tenants/acme/devices", None)
            .await
            .status,
        401
    );

    // Logout ends the session.
    let out = call(port, &Who::of(&s), "POST", "/api/v1/logout", None).await;
    assert_eq!(out.status, 204);
    assert_eq!(
        call(port, &Who::of(&s), "GET", "/api/v1/session", None)
            .await
            .status,
        401
    );

    // Guessing: the same answer for a wrong password and an unknown login,
    // then a lockout that the right password does not lift.
    let unknown = login(port, "nobody", PASSWORD).await.err().unwrap();
    let wrong = login(port, "ana", "not the password at all")
        .await
        .err()
        .unwrap();
    assert_eq!((unknown.status, &unknown.json), (wrong.status, &wrong.json));
    assert_eq!(wrong.status, 401);
    let _ = login(port, "ana", "not the password either").await;
    let locked = login(port, "ana", "still not the password")
        .await
        .err()
        .unwrap();
    assert_eq!(locked.status, 429, "{}", locked.text);
    assert!(locked.header("retry-after").is_some());
    let still = login(port, "ana", PASSWORD).await.err().unwrap();
    assert_eq!(still.status, 429);
    // `user passwd` lifts it.
    cli(
        d,
        &pg,
        &["user", "passwd", "--login", "ana"],
        &format!("{PASSWORD}\n"),
    );
    assert!(login(port, "ana", PASSWORD).await.is_ok());
    // A disabled user cannot log in, and their sessions end.
    let s = login(port, "ana", PASSWORD).await.unwrap();
    cli(d, &pg, &["user", "disable", "--login", "ana"], "");
    assert_eq!(
        call(port, &Who::of(&s), "GET", "/api/v1/session", None)
            .await
            .status,
        401
    );
    assert_eq!(
        login(port, "ana", PASSWORD).await.err().unwrap().status,
        401
    );
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_in_parallel_get_no_more_tries_and_unknown_logins_lock_alike() {
    let pg = TestPostgres::start().await;
    let app = TestApp::spawn(&pg.url, |c| {
        c.http.login_attempts = 4;
        c.http.client_login_attempts = 30;
    })
    .await;
    let port = app.http.port();
    let dir = tempfile::tempdir().unwrap();
    people_and_places(dir.path(), &pg);

    // 12 wrong passwords at once: 4 are checked, the 4th answered with the
    // lockout it caused, as one after another would be.
    let mut guesses = tokio::task::JoinSet::new();
    for i in 0..12 {
        let body = serde_json::json!({ "login": "wes", "password": format!("guess number {i}") })
            .to_string();
        guesses.spawn(async move {
            http(port, "POST", "/api/v1/login", &[], Some(&body))
                .await
                .status
        });
    }
    let statuses = guesses.join_all().await;
    let checked = statuses.iter().filter(|s| **s == 401).count();
    let held = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((checked, held), (3, 9), "{statuses:?}");
    let (failed, locked): (i32, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT failed_logins, locked_until FROM users WHERE login = 'wes'")
            .fetch_one(&pg.pool)
            .await
            .unwrap();
    assert_eq!(failed, 0, "the count starts again at the lock");
    assert!(locked.is_some_and(|l| l > chrono::Utc::now()));

    // An unknown login is held after as many tries, with the same answer.
    let mut unknown = Vec::new();
    for i in 0..5 {
        let body =
            serde_json::json!({ "login": "nobody", "password": format!("guess {i}") }).to_string();
        unknown.push(http(port, "POST", "/api/v1/login", &[], Some(&body)).await);
    }
    let statuses: Vec<u16> = unknown.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
    // The same wait as a known login's lockout.
    let known = login(port, "wes", "once more").await.err().unwrap();
    let wait = |a: &Answer| -> i64 { a.header("retry-after").unwrap().parse().unwrap() };
    assert!(
        (wait(&known) - wait(&unknown[3])).abs() <= 2,
        "{} vs {}",
        wait(&known),
        wait(&unknown[3])
    );

    // One address trying many logins is held, even for a right password.
    for i in 0..20 {
        let body = serde_json::json!({ "login": format!("user-{i}"), "password": "x" }).to_string();
        let _ = http(port, "POST", "/api/v1/login", &[], Some(&body)).await;
    }
    let a = login(port, "ana", PASSWORD).await.err().expect("held");
    assert_eq!(a.status, 429, "{}", a.text);
    app.stop().await.unwrap();
}
