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
use crate::hub::Hub;
use crate::query::QueryLimits;

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

/// The subscribe pipeline over `hub`, with `tokens`, class `rules` and default query limits.
pub fn admission(hub: &Arc<Hub>, tokens: Arc<TokenTable>, rules: ClassRules) -> Arc<Admission> {
    let catchup = Arc::new(Catchup::new(hub.clone(), Arc::new(QuietHistory(hub.clone())), u64::MAX));
    let limits =
        AdmissionLimits { query: QueryLimits::default(), field_list: 8, revalidate_every: Duration::from_secs(5) };
    Arc::new(Admission::new(hub.clone(), catchup, tokens, Arc::new(rules), limits))
}
