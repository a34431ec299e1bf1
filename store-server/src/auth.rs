//! Authentication and authorization: bearer tokens from an auth file, with roles and
//! stream scopes. The file keeps only each token's SHA-256; tokens are compared in constant
//! time and never logged.

use crate::protocol::{Category, StreamName};
use crate::store::StreamPattern;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Why an auth file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// It could not be read.
    #[error("cannot read the auth file {path}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It is not valid TOML of the expected shape.
    #[error("the auth file is not valid: {0}")]
    Parse(String),
    /// A token's entry is wrong.
    #[error("token {name:?}: {why}")]
    Token {
        /// The token's name.
        name: String,
        /// What is wrong.
        why: String,
    },
}

/// What a token may do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Roles {
    /// Reads and subscriptions.
    pub read: bool,
    /// Appends.
    pub write: bool,
    /// Deletion, retention and erasure.
    pub delete: bool,
    /// Everything, consumer positions included.
    pub admin: bool,
}

/// One role a route needs (shared/API.md, "Access").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads and subscriptions.
    Read,
    /// Appends.
    Write,
    /// Deletion, retention and erasure.
    Delete,
    /// Everything else.
    Admin,
}

/// What part of the store a request reaches, checked against a token's stream scopes.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// One stream.
    Stream(&'a StreamName),
    /// Every stream of one category.
    Category(&'a Category),
    /// The whole store: only an unscoped token reaches it.
    Everything,
    /// Whatever is in the token's scope: the handler answers only that.
    InScope,
}

/// One configured token.
#[derive(Debug, Clone)]
pub struct Token {
    /// Its name, for logs (the token itself is never logged).
    pub name: String,
    sha256: [u8; 32],
    roles: Roles,
    /// Stream-name patterns it is limited to; `None`: every stream.
    streams: Option<Arc<[StreamPattern]>>,
}

impl Token {
    /// The streams it is limited to (and the consumers it sees, by the same patterns);
    /// `None`: every stream.
    pub fn scope(&self) -> Option<&Arc<[StreamPattern]>> {
        self.streams.as_ref()
    }

    /// What it may do, scope aside.
    pub fn roles(&self) -> Roles {
        self.roles
    }

    /// Whether this token may act as `role` on `scope`. `admin` may do everything.
    pub fn may(&self, role: Role, scope: Scope<'_>) -> bool {
        let Roles { read, write, delete, admin } = self.roles;
        let has_role = admin
            || match role {
                Role::Read => read,
                Role::Write => write,
                Role::Delete => delete,
                Role::Admin => false,
            };
        has_role
            && (admin
                || match scope {
                    Scope::Stream(stream) => self.covers_stream(stream),
                    Scope::Category(category) => self.covers_category(category),
                    Scope::Everything => self.streams.is_none(),
                    Scope::InScope => true,
                })
    }

    fn covers_stream(&self, stream: &StreamName) -> bool {
        self.streams
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| p.covers(stream.as_str())))
    }

    fn covers_category(&self, category: &Category) -> bool {
        self.streams
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| p.covers_category(category)))
    }
}

/// The tokens of an auth file.
#[derive(Debug, Clone)]
pub struct Tokens {
    tokens: Vec<Token>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    tokens: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    sha256: String,
    roles: Vec<String>,
    streams: Option<Vec<String>>,
}

impl Tokens {
    /// Reads an auth file.
    ///
    /// # Errors
    /// [`Error`] says what is wrong, naming the token.
    pub fn load(path: &std::path::Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| Error::Read { path: path.to_owned(), source })?;
        Self::parse(&text)
    }

    /// Parses the TOML of an auth file.
    ///
    /// # Errors
    /// [`Error`] says what is wrong, naming the token.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let file: File = toml::from_str(text).map_err(|e| Error::Parse(e.to_string()))?;
        let tokens = file.tokens.into_iter().map(token).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { tokens })
    }

    /// The token whose SHA-256 matches `presented`, comparing every entry in constant time.
    pub fn find(&self, presented: &str) -> Option<&Token> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        // No early exit: the time taken does not depend on which entry matched.
        for token in &self.tokens {
            if bool::from(token.sha256.ct_eq(&digest)) {
                found = Some(token);
            }
        }
        found
    }
}

fn token(entry: Entry) -> Result<Token, Error> {
    let fail = |why: &str| Error::Token { name: entry.name.clone(), why: why.into() };
    let mut digest = [0u8; 32];
    hex::decode_to_slice(&entry.sha256, &mut digest)
        .map_err(|_| fail("sha256 must be 64 hex digits"))?;
    let mut roles = Roles::default();
    for role in &entry.roles {
        match role.as_str() {
            "read" => roles.read = true,
            "write" => roles.write = true,
            "delete" => roles.delete = true,
            "admin" => roles.admin = true,
            _ => return Err(fail(&format!("unknown role {role:?} (read, write, delete, admin)"))),
        }
    }
    if let Some(patterns) = &entry.streams {
        for pattern in patterns {
            let name = pattern.strip_suffix('*').unwrap_or(pattern);
            if name.contains('*')
                || (!pattern.ends_with('*') && StreamName::new(pattern.as_str()).is_err())
            {
                return Err(fail(&format!(
                    "bad stream pattern {pattern:?}: a name, or a prefix ending in *"
                )));
            }
        }
    }
    let streams =
        entry.streams.map(|patterns| patterns.iter().map(|p| StreamPattern::parse(p)).collect());
    Ok(Token { name: entry.name, sha256: digest, roles, streams })
}

/// A fresh random token and the auth-file entry for it (`store-server token new`).
///
/// # Errors
/// The operating system's random source failed.
pub fn new_token(
    name: &str,
    roles: &[String],
    streams: Option<&[String]>,
) -> Result<(String, String), String> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| e.to_string())?;
    let token = hex::encode(secret);
    let digest = hex::encode(Sha256::digest(token.as_bytes()));
    let quoted =
        |items: &[String]| items.iter().map(|i| format!("{i:?}")).collect::<Vec<_>>().join(", ");
    let mut entry = format!(
        "[[tokens]]\nname = {name:?}\nsha256 = \"{digest}\"\nroles = [{}]\n",
        quoted(roles)
    );
    if let Some(streams) = streams {
        entry.push_str(&format!("streams = [{}]\n", quoted(streams)));
    }
    // The entry must load: the same rules as the file's.
    Tokens::parse(&entry).map_err(|e| e.to_string())?;
    Ok((token, entry))
}

/// How long a subscription ticket may wait to be used.
pub const TICKET_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// Tickets outstanding at most (`--ui-tickets-max`): past it, the oldest go.
pub const TICKETS_MAX: usize = 10_000;

/// Subscription tickets: a browser's `EventSource` cannot send an `Authorization` header,
/// so the UI trades its token for a ticket and puts that in the subscription's URL. A
/// ticket acts as the token that got it, for one subscription only (`GET …/subscribe`),
/// once, within [`TICKET_TTL`]: one that reaches a log or a history is already spent.
/// Only its SHA-256 is kept.
pub struct Tickets {
    issued: std::sync::Mutex<std::collections::VecDeque<([u8; 32], std::time::Instant, Token)>>,
    max: usize,
}

impl Tickets {
    /// Room for `max` outstanding tickets.
    pub fn new(max: usize) -> Self {
        Self { issued: std::sync::Mutex::default(), max: max.max(1) }
    }

    /// A new ticket for `token`.
    ///
    /// # Errors
    /// The system's random source failed.
    pub fn issue(&self, token: &Token) -> Result<String, String> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| e.to_string())?;
        let ticket = hex::encode(secret);
        let digest: [u8; 32] = Sha256::digest(ticket.as_bytes()).into();
        let mut issued = self.issued.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
        issued.retain(|(_, at, _)| now.duration_since(*at) < TICKET_TTL);
        while issued.len() >= self.max {
            issued.pop_front();
        }
        issued.push_back((digest, now, token.clone()));
        Ok(ticket)
    }

    /// The token `ticket` was issued for, once; `None` when unknown, used or expired.
    pub fn redeem(&self, ticket: &str) -> Option<Token> {
        let digest: [u8; 32] = Sha256::digest(ticket.as_bytes()).into();
        let mut issued = self.issued.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let index = issued.iter().position(|(d, _, _)| bool::from(d.ct_eq(&digest)))?;
        let (_, at, token) = issued.remove(index)?;
        (at.elapsed() < TICKET_TTL).then_some(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_with(roles: &[&str], streams: Option<&[&str]>) -> Token {
        let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
        let streams: Option<Vec<String>> =
            streams.map(|s| s.iter().map(|p| p.to_string()).collect());
        let (secret, entry) = new_token("t", &roles, streams.as_deref()).unwrap();
        Tokens::parse(&entry).unwrap().find(&secret).unwrap().clone()
    }

    #[test]
    fn roles_and_scopes() {
        use Role::*;
        let s = |n: &str| StreamName::new(n).unwrap();
        let c = |n: &str| Category::new(n).unwrap();
        let (account_1, account, order_1) = (s("account-1"), s("account"), s("order-1"));
        let scoped = token_with(&["read", "write"], Some(&["account-*"]));
        assert!(scoped.may(Write, Scope::Stream(&account_1)));
        assert!(!scoped.may(Write, Scope::Stream(&account)), "account-* is not the stream account");
        assert!(!scoped.may(Write, Scope::Stream(&order_1)));
        assert!(scoped.may(Read, Scope::Category(&c("account"))));
        assert!(!scoped.may(Read, Scope::Category(&c("accounting"))));
        assert!(!scoped.may(Read, Scope::Everything));
        assert!(scoped.may(Read, Scope::InScope));
        assert!(!scoped.may(Delete, Scope::Stream(&account_1)), "delete is a role of its own");
        assert!(!scoped.may(Admin, Scope::InScope));
        let reader = token_with(&["read"], None);
        assert!(reader.may(Read, Scope::Everything) && !reader.may(Write, Scope::Stream(&s("x"))));
        let deleter = token_with(&["delete"], Some(&["account-*"]));
        assert!(deleter.may(Delete, Scope::Stream(&account_1)));
        assert!(!deleter.may(Delete, Scope::Everything) && !deleter.may(Read, Scope::InScope));
        let admin = token_with(&["admin"], None);
        assert!(
            admin.may(Admin, Scope::Everything)
                && admin.may(Write, Scope::Stream(&s("x")))
                && admin.may(Delete, Scope::Everything)
        );
        let exact = token_with(&["read"], Some(&["order-7"]));
        assert!(
            exact.may(Read, Scope::Stream(&s("order-7")))
                && !exact.may(Read, Scope::Category(&c("order")))
        );
    }

    #[test]
    fn bad_files_are_refused_naming_the_token() {
        assert!(
            Tokens::parse("[[tokens]]\nname = \"x\"\nsha256 = \"00\"\nroles = [\"read\"]\n")
                .is_err()
        );
        let bad_role = format!(
            "[[tokens]]\nname = \"x\"\nsha256 = \"{}\"\nroles = [\"root\"]\n",
            "0".repeat(64)
        );
        assert!(Tokens::parse(&bad_role).unwrap_err().to_string().contains("\"x\""));
        assert!(Tokens::parse("tokens = 3").is_err());
        assert!(Tokens::parse("").unwrap().find("anything").is_none());
    }
}
