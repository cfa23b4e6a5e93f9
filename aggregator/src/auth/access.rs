//! Who is asking and what they may see: the one [`Scope`] every data query
//! takes.
//!
//! A request is authenticated once, by [`crate::api::auth`], as a user
//! (session cookie), an API token, or a bootstrap query token from the
//! config, and becomes a [`Scope`] for the tenant in its path. Storage
//! functions that read tenant data take `&Scope` and filter by it in SQL,
//! so a handler without a scope cannot read anything: a `Scope` can only be
//! made here, from a caller's grants.
//!
//! # The model
//!
//! ```text
//! user ──< binding (tenant, role, scope) ; scope = the tenant | a place's subtree | a customer
//! api token = one binding held by a program ; operator = admin of every tenant
//! ```
//!
//! A caller's grants in a tenant are unioned for reading: a viewer of
//! region `west` who is also editor of store `e-3` reads both. Changing
//! something needs a grant of at least `editor` (`admin` for people and
//! tokens) whose scope covers it.

use dash_shared::TenantId;
use serde::Serialize;

/// What a grant lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Editor,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "editor" => Some(Role::Editor),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }
}

/// Where a grant applies inside its tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "id")]
pub enum Within {
    Tenant,
    /// A place and everything below it (by id; resolved to a path when read).
    Place(String),
    /// One customer's devices.
    Customer(String),
}

/// One role in one part of a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    pub role: Role,
    pub within: Within,
}

impl Grant {
    /// A grant from its parts as people and rows spell them: a role name,
    /// and at most one of a place and a customer (neither: the whole
    /// tenant). The error says what is wrong.
    pub fn from_parts(
        role: &str,
        place: Option<String>,
        customer: Option<String>,
    ) -> Result<Grant, String> {
        let role =
            Role::parse(role).ok_or_else(|| format!("role {role:?}: admin, editor or viewer"))?;
        let within = match (place, customer) {
            (Some(_), Some(_)) => return Err("give a place or a customer, not both".into()),
            (Some(p), None) => Within::Place(p),
            (None, Some(c)) => Within::Customer(c),
            (None, None) => Within::Tenant,
        };
        Ok(Grant { role, within })
    }
}

/// Who made a request, for the log and the audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "id")]
pub enum Actor {
    User(String),
    Token(String),
    /// A query token from `http.tokens` (read-only, whole tenant).
    Bootstrap,
    /// A share link, by its id.
    Share(i64),
    /// `dash-aggregator` commands, run by whoever holds the database.
    Cli,
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actor::User(login) => write!(f, "user {login}"),
            Actor::Token(name) => write!(f, "token {name}"),
            Actor::Bootstrap => write!(f, "bootstrap token"),
            Actor::Share(id) => write!(f, "share link {id}"),
            Actor::Cli => write!(f, "command line"),
        }
    }
}

/// What one caller may see and do in one tenant. Made only by
/// [`Scope::new`] from grants the caller holds there (at least one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    tenant: TenantId,
    actor: Actor,
    grants: Vec<Grant>,
}

/// The SQL form of a scope's reach: `None` everywhere for the whole tenant;
/// otherwise the place ids whose subtrees it reaches and the customers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    pub places: Option<Vec<String>>,
    pub customers: Option<Vec<String>>,
}

impl Scope {
    /// `None` when the caller holds no grant in the tenant.
    pub(crate) fn new(tenant: TenantId, actor: Actor, grants: Vec<Grant>) -> Option<Scope> {
        (!grants.is_empty()).then_some(Scope {
            tenant,
            actor,
            grants,
        })
    }

    /// The whole tenant, as an admin: for the command line, whose user
    /// holds the database anyway.
    pub(crate) fn command_line(tenant: TenantId) -> Scope {
        Scope {
            tenant,
            actor: Actor::Cli,
            grants: vec![Grant {
                role: Role::Admin,
                within: Within::Tenant,
            }],
        }
    }

    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }

    /// Whether it reaches the whole tenant.
    pub fn whole_tenant(&self) -> bool {
        self.grants.iter().any(|g| g.within == Within::Tenant)
    }

    /// What reads filter on (the union of every grant).
    pub fn reach(&self) -> Reach {
        if self.whole_tenant() {
            return Reach::default();
        }
        let mut places = Vec::new();
        let mut customers = Vec::new();
        for g in &self.grants {
            match &g.within {
                Within::Place(p) => places.push(p.clone()),
                Within::Customer(c) => customers.push(c.clone()),
                Within::Tenant => {}
            }
        }
        Reach {
            places: Some(places),
            customers: Some(customers),
        }
    }

    /// The highest role it holds anywhere in the tenant.
    pub fn top_role(&self) -> Role {
        self.grants
            .iter()
            .map(|g| g.role)
            .max()
            .unwrap_or(Role::Viewer)
    }

    /// Whether some grant of at least `role` reaches the whole tenant.
    pub fn may_tenant_wide(&self, role: Role) -> bool {
        self.grants
            .iter()
            .any(|g| g.role >= role && g.within == Within::Tenant)
    }

    /// The scope narrowed to grants of at least `role`, for a change;
    /// `None` when it holds none.
    pub fn at_least(&self, role: Role) -> Option<Scope> {
        let grants: Vec<Grant> = self
            .grants
            .iter()
            .filter(|g| g.role >= role)
            .cloned()
            .collect();
        Scope::new(self.tenant.clone(), self.actor.clone(), grants)
    }

    /// A description for the audit log: `tenant`, or the places and
    /// customers it reaches.
    pub fn describe(&self) -> String {
        if self.whole_tenant() {
            return "tenant".into();
        }
        let parts: Vec<String> = self
            .grants
            .iter()
            .map(|g| match &g.within {
                Within::Place(p) => format!("place:{p}"),
                Within::Customer(c) => format!("customer:{c}"),
                Within::Tenant => "tenant".into(),
            })
            .collect();
        parts.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(grants: Vec<Grant>) -> Option<Scope> {
        Scope::new(
            TenantId::new("acme").unwrap(),
            Actor::User("ana".into()),
            grants,
        )
    }

    #[test]
    fn no_grant_no_scope_and_grants_union_for_reading_but_not_for_changing() {
        assert!(scope(vec![]).is_none());
        let s = scope(vec![
            Grant {
                role: Role::Viewer,
                within: Within::Place("west".into()),
            },
            Grant {
                role: Role::Editor,
                within: Within::Customer("fr-4".into()),
            },
        ])
        .unwrap();
        assert!(!s.whole_tenant());
        assert_eq!(
            s.reach(),
            Reach {
                places: Some(vec!["west".into()]),
                customers: Some(vec!["fr-4".into()]),
            }
        );
        assert_eq!(s.top_role(), Role::Editor);
        let edit = s.at_least(Role::Editor).unwrap();
        assert_eq!(edit.reach().places, Some(vec![]));
        assert!(s.at_least(Role::Admin).is_none());
        assert!(!s.may_tenant_wide(Role::Viewer));
        assert_eq!(s.describe(), "place:west,customer:fr-4");
    }

    #[test]
    fn a_tenant_wide_grant_reaches_everything() {
        let s = scope(vec![
            Grant {
                role: Role::Viewer,
                within: Within::Tenant,
            },
            Grant {
                role: Role::Admin,
                within: Within::Place("west".into()),
            },
        ])
        .unwrap();
        assert_eq!(s.reach(), Reach::default());
        assert!(s.may_tenant_wide(Role::Viewer));
        assert!(!s.may_tenant_wide(Role::Editor));
        assert_eq!(s.describe(), "tenant");
    }
}
