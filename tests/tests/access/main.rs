//! People, roles, tokens and sessions, and the isolation of every route:
//! the route list comes from the router itself
//! (`dash_aggregator::api::http::routes`), so a new route is checked too.

use std::path::Path;

use dash_aggregator::api::http::{Access, routes};
use dash_aggregator::auth::access::Role;
use dash_aggregator::config::QueryToken;
use dash_aggregator::ingest::Delivery;
use dash_shared::{AgentId, SeriesBlock, SeriesKey, TenantId};
use dash_tests::app::TestApp;
use dash_tests::pg::TestPostgres;
use dash_tests::{Answer, http};

const PASSWORD: &str = "a long enough password";

/// Runs `dash-aggregator ARGS` (with `stdin` on its standard input).
fn cli(dir: &Path, pg: &TestPostgres, args: &[&str], stdin: &str) -> String {
    use std::io::Write;
    let mut child = dash_tests::process::aggregator_command(dir, &pg.url)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "dash-aggregator {args:?}: {said}");
    said
}

/// An aggregator with the bootstrap token `acme-token` for acme.
async fn with_token(pg: &TestPostgres) -> TestApp {
    TestApp::spawn(&pg.url, |c| {
        c.http.tokens = vec![QueryToken {
            tenant: "acme".into(),
            sha256: dash_runtime::secret::sha256_hex("acme-token"),
        }];
    })
    .await
}

/// A logged-in browser: its cookie and CSRF token.
struct Session {
    cookie: String,
    csrf: String,
}

/// Requests made through [`call`] and [`login`] in this test process.
static REQUESTS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

async fn audit_rows(pg: &TestPostgres) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_log")
        .fetch_one(&pg.pool)
        .await
        .unwrap()
}

async fn login(port: u16, login: &str, password: &str) -> Result<Session, Answer> {
    REQUESTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let body = serde_json::json!({ "login": login, "password": password }).to_string();
    let a = http(port, "POST", "/api/v1/login", &[], Some(&body)).await;
    if a.status != 200 {
        return Err(a);
    }
    let set = a.header("set-cookie").expect("a session cookie").to_owned();
    let cookie = set.split(';').next().unwrap().to_owned();
    Ok(Session {
        cookie,
        csrf: a.json["csrf_token"].as_str().unwrap().to_owned(),
    })
}

/// How a caller authenticates.
#[derive(Clone)]
enum Who {
    Nobody,
    Bearer(String),
    Browser(String, String),
}

impl Who {
    fn of(s: &Session) -> Who {
        Who::Browser(s.cookie.clone(), s.csrf.clone())
    }
}

async fn call(port: u16, who: &Who, method: &str, path: &str, body: Option<&str>) -> Answer {
    REQUESTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let auth;
    let mut headers: Vec<(&str, &str)> = Vec::new();
    match who {
        Who::Nobody => {}
        Who::Bearer(t) => {
            auth = format!("Bearer {t}");
            headers.push(("Authorization", &auth));
        }
        Who::Browser(cookie, csrf) => {
            headers.push(("Cookie", cookie));
            headers.push(("X-CSRF-Token", csrf));
        }
    }
    http(port, method, path, &headers, body).await
}

/// acme with the places `pl-corp` → `pl-west`, `pl-east`, a customer
/// `cu-one`, and the users `ana` (admin), `edd` (editor of the west) and
/// `wes` (viewer of the west).
fn people_and_places(d: &Path, pg: &TestPostgres) {
    for args in [
        &["place", "add", "--tenant", "acme", "--id", "pl-corp"][..],
        &[
            "place", "add", "--tenant", "acme", "--id", "pl-west", "--parent", "pl-corp",
        ],
        &[
            "place", "add", "--tenant", "acme", "--id", "pl-east", "--parent", "pl-corp",
        ],
        &[
            "customer", "add", "--tenant", "acme", "--id", "cu-one", "--name", "One",
        ],
    ] {
        cli(d, pg, args, "");
    }
    for (login, role, place) in [
        ("ana", "admin", None),
        ("edd", "editor", Some("pl-west")),
        ("wes", "viewer", Some("pl-west")),
    ] {
        cli(
            d,
            pg,
            &["user", "add", "--login", login, "--password-stdin"],
            &format!("{PASSWORD}\n"),
        );
        let mut args = vec![
            "grant", "--login", login, "--tenant", "acme", "--role", role,
        ];
        if let Some(p) = place {
            args.extend(["--place", p]);
        }
        cli(d, pg, &args, "");
    }
}

mod audit;
mod grants;
mod routes;
mod sessions;
