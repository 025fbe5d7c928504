//! What unit tests share: in-memory stand-ins for the layers that await tokens or history
//! (tokens from a table the test edits, history in which nothing happened) and a deterministic
//! random generator. Test-only.

mod rng;

pub use rng::Rng;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::admission::{Admission, AdmissionLimits};
use crate::auth::rules::ClassRules;
use crate::auth::{Identity, TokenError, TokenResolver};
use crate::catchup::{Catchup, HistoryBatch, HistoryError, HistorySource};
use crate::hub::{Change, Hub};
use crate::query::QueryLimits;
use crate::snapshot::{Encode, SnapshotError, SnapshotRead, SnapshotSource};
use serde_json::{Map, Value};

/// Tokens and what each resolves to; an unknown token is invalid.
#[derive(Default)]
pub struct TokenTable(Mutex<HashMap<String, Result<Identity, TokenError>>>);

impl TokenTable {
    pub fn set(&self, token: &str, outcome: Result<Identity, TokenError>) {
        self.0.lock().unwrap().insert(token.to_string(), outcome);
    }

    /// A token for user `id`.
    pub fn user(&self, token: &str, id: &str) {
        self.set(token, Ok(Identity { user_id: Some(id.into()), ..Identity::default() }));
    }
}

impl TokenResolver for TokenTable {
    fn identify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Identity, TokenError>> {
        let outcome = self.0.lock().unwrap().get(token).cloned();
        Box::pin(async move { outcome.unwrap_or_else(|| Err(TokenError::Invalid("unknown token".into()))) })
    }
}

/// History in which nothing happened: every read is complete and empty, in the hub's epoch.
pub struct QuietHistory(pub Arc<Hub>);

impl HistorySource for QuietHistory {
    fn read<'a>(
        &'a self,
        _after: i64,
        upto: i64,
        _class: &'a str,
    ) -> BoxFuture<'a, Result<HistoryBatch, HistoryError>> {
        let epoch = self.0.position().epoch;
        Box::pin(async move { Ok(HistoryBatch { epoch, floor: 0, changes: Vec::new(), reached: upto }) })
    }
}

/// A table's rows, snapshotted at the hub's position, as inserts the test lists.
pub struct Rows {
    pub hub: Arc<Hub>,
    pub rows: Mutex<Vec<Change>>,
}

impl SnapshotSource for Rows {
    fn read<'a>(
        &'a self,
        class: &'a str,
        _where: &'a Map<String, Value>,
        encode: Encode<'a>,
        limit: usize,
    ) -> BoxFuture<'a, Result<SnapshotRead, SnapshotError>> {
        let at = self.hub.position();
        let rows = self.rows.lock().unwrap().clone();
        Box::pin(async move {
            let objects: Vec<String> = rows.iter().filter(|c| &*c.class == class).filter_map(encode).collect();
            if objects.len() > limit {
                return Err(SnapshotError::TooManyRows { limit });
            }
            Ok(SnapshotRead { epoch: at.epoch, head: at.offset, skip: Vec::new(), objects })
        })
    }
}

/// The subscribe pipeline over `hub`, with `tokens`, class `rules`, default query limits and a
/// snapshot of `rows` (at most 3).
pub fn admission_with(hub: &Arc<Hub>, tokens: Arc<TokenTable>, rules: ClassRules, rows: Vec<Change>) -> Arc<Admission> {
    let snapshots = Arc::new(Rows { hub: hub.clone(), rows: Mutex::new(rows) });
    let history = Arc::new(QuietHistory(hub.clone()));
    let catchup = Arc::new(Catchup::new(hub.clone(), history, u64::MAX, snapshots.clone(), 3));
    let limits = AdmissionLimits {
        query: QueryLimits::default(),
        field_list: 8,
        revalidate_every: Duration::from_secs(5),
        snapshot_rows: 3,
    };
    Arc::new(Admission::new(hub.clone(), catchup, tokens, Arc::new(rules), snapshots, limits))
}

/// [`admission_with`] an empty table.
pub fn admission(hub: &Arc<Hub>, tokens: Arc<TokenTable>, rules: ClassRules) -> Arc<Admission> {
    admission_with(hub, tokens, rules, Vec::new())
}
