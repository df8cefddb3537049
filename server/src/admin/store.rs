//! Agents and revoked tokens, kept in an embedded SQLite database so they survive a restart.
//! Small and synchronous: each call is one short statement under a mutex.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// An agent as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    pub id: String,
    pub name: String,
    /// Skill → level (1-100).
    #[serde(default)]
    pub skills: BTreeMap<String, u8>,
    /// Calls offered to the agent at once.
    #[serde(default = "one")]
    pub max_calls: u32,
}

/// An agent's SIP password as kept: never the password itself, only its HA1 hashes for
/// [`crate::sip::digest::REALM`], one per algorithm a phone may answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipPassword {
    /// Names this password as a `jti` names a token: revoking it signs out every phone that
    /// registered with it, and the tokens minted for those registrations carry it.
    pub id: String,
    pub ha1_md5: String,
    pub ha1_sha256: String,
    /// Unix seconds.
    pub created: u64,
}

fn one() -> u32 {
    1
}

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or a statement failed.
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The database file could not be created.
    #[error("creating {}: {source}", path.display())]
    Create {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// A stored value is not what we wrote (hand-edited database).
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

#[derive(Debug)]
pub struct Store {
    db: Mutex<Connection>,
}

impl Store {
    /// Opens (creating when missing) the database at `path`. A new file is readable by its
    /// owner only, like the keys: it names every agent and the tokens revoked. SQLite gives
    /// its journal and WAL files the database's mode.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            let _ = std::fs::create_dir_all(dir);
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        options.open(path).map_err(|e| StoreError::Create {
            path: path.to_owned(),
            source: e,
        })?;
        Self::init(Connection::open(path)?)
    }

    /// A database in memory, for tests.
    pub fn in_memory() -> Result<Store, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(db: Connection) -> Result<Store, StoreError> {
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS agents (
                 id TEXT PRIMARY KEY,
                 name TEXT NOT NULL,
                 skills TEXT NOT NULL,
                 max_calls INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS revoked (
                 jti TEXT PRIMARY KEY,
                 expires INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS sip_passwords (
                 agent TEXT PRIMARY KEY,
                 id TEXT NOT NULL,
                 ha1_md5 TEXT NOT NULL,
                 ha1_sha256 TEXT NOT NULL,
                 created INTEGER NOT NULL
             );",
        )?;
        Ok(Store { db: Mutex::new(db) })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates or replaces. Returns true when the agent is new.
    pub fn put_agent(&self, agent: &Agent) -> Result<bool, StoreError> {
        let skills =
            serde_json::to_string(&agent.skills).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let db = self.db();
        let existed: Option<String> = db
            .query_row("SELECT id FROM agents WHERE id = ?1", [&agent.id], |r| {
                r.get(0)
            })
            .optional()?;
        db.execute(
            "INSERT OR REPLACE INTO agents (id, name, skills, max_calls) VALUES (?1, ?2, ?3, ?4)",
            params![agent.id, agent.name, skills, agent.max_calls],
        )?;
        Ok(existed.is_none())
    }

    pub fn agent(&self, id: &str) -> Result<Option<Agent>, StoreError> {
        let db = self.db();
        let row = db
            .query_row(
                "SELECT id, name, skills, max_calls FROM agents WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, String>(2)?, r.get(3)?)),
            )
            .optional()?;
        row.map(to_agent).transpose()
    }

    pub fn agents(&self) -> Result<Vec<Agent>, StoreError> {
        let db = self.db();
        let mut stmt = db.prepare("SELECT id, name, skills, max_calls FROM agents ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, String>(2)?, r.get(3)?))
        })?;
        rows.map(|r| to_agent(r?)).collect()
    }

    /// Returns true when there was such an agent. Her SIP password goes with her.
    pub fn delete_agent(&self, id: &str) -> Result<bool, StoreError> {
        let db = self.db();
        db.execute("DELETE FROM sip_passwords WHERE agent = ?1", [id])?;
        Ok(db.execute("DELETE FROM agents WHERE id = ?1", [id])? > 0)
    }

    /// Gives `agent` a SIP password, replacing any she had. Returns the id of the one
    /// replaced, which the caller revokes.
    pub fn set_sip_password(
        &self,
        agent: &str,
        password: &SipPassword,
    ) -> Result<Option<String>, StoreError> {
        let db = self.db();
        let old = sip_password_id(&db, agent)?;
        db.execute(
            "INSERT OR REPLACE INTO sip_passwords (agent, id, ha1_md5, ha1_sha256, created) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                agent,
                password.id,
                password.ha1_md5,
                password.ha1_sha256,
                password.created as i64
            ],
        )?;
        Ok(old)
    }

    pub fn sip_password(&self, agent: &str) -> Result<Option<SipPassword>, StoreError> {
        let db = self.db();
        let row = db
            .query_row(
                "SELECT id, ha1_md5, ha1_sha256, created FROM sip_passwords WHERE agent = ?1",
                [agent],
                |r| {
                    Ok(SipPassword {
                        id: r.get(0)?,
                        ha1_md5: r.get(1)?,
                        ha1_sha256: r.get(2)?,
                        created: r.get::<_, i64>(3)?.max(0) as u64,
                    })
                },
            )
            .optional()?;
        Ok(row)
    }

    /// Removes `agent`'s SIP password; returns its id, which the caller revokes.
    pub fn delete_sip_password(&self, agent: &str) -> Result<Option<String>, StoreError> {
        let db = self.db();
        let old = sip_password_id(&db, agent)?;
        db.execute("DELETE FROM sip_passwords WHERE agent = ?1", [agent])?;
        Ok(old)
    }

    /// Remembers a revoked token id until the token would have expired anyway.
    pub fn revoke(&self, jti: &str, expires: u64) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT OR REPLACE INTO revoked (jti, expires) VALUES (?1, ?2)",
            params![jti, expires as i64],
        )?;
        Ok(())
    }

    /// Revoked token ids still worth remembering at `now` (unix seconds); older ones are
    /// dropped on the way.
    pub fn revoked(&self, now: u64) -> Result<Vec<String>, StoreError> {
        let db = self.db();
        db.execute("DELETE FROM revoked WHERE expires < ?1", [now as i64])?;
        let mut stmt = db.prepare("SELECT jti FROM revoked ORDER BY jti")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<Vec<String>, _>>()?)
    }
}

/// The id of `agent`'s SIP password, if she has one.
fn sip_password_id(db: &Connection, agent: &str) -> Result<Option<String>, StoreError> {
    Ok(db
        .query_row(
            "SELECT id FROM sip_passwords WHERE agent = ?1",
            [agent],
            |r| r.get(0),
        )
        .optional()?)
}

fn to_agent(row: (String, String, String, u32)) -> Result<Agent, StoreError> {
    let (id, name, skills, max_calls) = row;
    let skills =
        serde_json::from_str(&skills).map_err(|e| StoreError::Corrupt(format!("{id}: {e}")))?;
    Ok(Agent {
        id,
        name,
        skills,
        max_calls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Agent {
        Agent {
            id: "alice".into(),
            name: "Alice".into(),
            skills: BTreeMap::from([("billing".into(), 80)]),
            max_calls: 1,
        }
    }

    #[test]
    fn agents_survive_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db").join("agent-edge.db");
        {
            let store = Store::open(&path).unwrap();
            assert!(store.put_agent(&alice()).unwrap());
            assert!(!store.put_agent(&alice()).unwrap());
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.agent("alice").unwrap(), Some(alice()));
        assert_eq!(store.agents().unwrap(), vec![alice()]);
        assert!(store.delete_agent("alice").unwrap());
        assert!(!store.delete_agent("alice").unwrap());
        assert_eq!(store.agent("alice").unwrap(), None);
    }

    #[test]
    fn a_sip_password_is_replaced_removed_and_goes_with_its_agent() {
        let store = Store::in_memory().unwrap();
        store.put_agent(&alice()).unwrap();
        let password = |id: &str| SipPassword {
            id: id.into(),
            ha1_md5: "m".into(),
            ha1_sha256: "s".into(),
            created: 7,
        };
        assert_eq!(
            store.set_sip_password("alice", &password("p1")).unwrap(),
            None
        );
        assert_eq!(
            store.set_sip_password("alice", &password("p2")).unwrap(),
            Some("p1".into())
        );
        assert_eq!(store.sip_password("alice").unwrap(), Some(password("p2")));
        assert_eq!(
            store.delete_sip_password("alice").unwrap(),
            Some("p2".into())
        );
        assert_eq!(store.sip_password("alice").unwrap(), None);
        store.set_sip_password("alice", &password("p3")).unwrap();
        store.delete_agent("alice").unwrap();
        assert_eq!(store.sip_password("alice").unwrap(), None);
    }

    #[test]
    fn revocations_are_forgotten_once_the_token_expired() {
        let store = Store::in_memory().unwrap();
        store.revoke("a", 100).unwrap();
        store.revoke("b", 300).unwrap();
        assert_eq!(store.revoked(50).unwrap(), vec!["a", "b"]);
        assert_eq!(store.revoked(200).unwrap(), vec!["b"]);
    }
}
