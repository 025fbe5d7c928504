//! Snapshots of watched tables (see [`crate::snapshot`] for the contract): one repeatable-read,
//! read-only transaction on a pool of its own, with a statement timeout, reads the stream head,
//! the changes it sees that are not sequenced yet, and the candidate rows; the unsequenced
//! changes are then waited for until they have positions (the feed sequences them within a
//! poll interval), which the subscription skips when it resumes from the head.
//!
//! What SQL can evaluate of a `where` narrows the read ([`narrowing`]): top-level equality, `$in`
//! and `$eq` on text, numeric and boolean columns, numeric ranges, and `objectId` on a one-column
//! primary key. Everything else is decided in memory by the same matcher as live events, so the
//! translation only has to be a superset.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::TryStreamExt;
use serde_json::{Map, Value};
use sqlx::postgres::PgPool;
use sqlx::Row;
use tokio::sync::Mutex;
use uuid::Uuid;

use super::catalog::Catalog;
use super::rows::{to_parse_object, TableInfo};
use crate::hub::{Change, ChangeKind};
use crate::snapshot::{Encode, SnapshotError, SnapshotRead, SnapshotSource};

/// How long the changes a snapshot saw unsequenced may take to get their positions.
const SEQUENCING_WAIT: Duration = Duration::from_secs(5);
const SEQUENCING_POLL: Duration = Duration::from_millis(5);

/// Snapshots of the watched tables.
pub struct Snapshots {
    /// A pool of its own: a snapshot never takes a connection the feed or a replay needs.
    pool: PgPool,
    catalog: Mutex<Catalog>,
    timeout: Duration,
}

impl Snapshots {
    pub fn new(pool: PgPool, aliases: BTreeMap<String, String>, timeout: Duration) -> Snapshots {
        Snapshots { pool, catalog: Mutex::new(Catalog::new(aliases)), timeout }
    }

    /// The watched tables whose class is `class`.
    async fn tables_of(&self, class: &str) -> Result<Vec<(String, String, TableInfo)>, sqlx::Error> {
        let watched: Vec<(String, String)> = sqlx::query_as(
            "select n.nspname::text, c.relname::text from livegate.watched w \
             join pg_class c on c.oid = w.relid join pg_namespace n on n.oid = c.relnamespace",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut catalog = self.catalog.lock().await;
        let mut tables = Vec::new();
        for (schema, table) in watched {
            let info = catalog.info(&self.pool, &schema, &table, None).await?;
            if &*info.class == class {
                tables.push((schema, table, (*info).clone()));
            }
        }
        Ok(tables)
    }

    async fn take(
        &self,
        class: &str,
        where_: &Map<String, Value>,
        encode: Encode<'_>,
        limit: usize,
    ) -> Result<SnapshotRead, SnapshotError> {
        let tables = self.tables_of(class).await.map_err(|e| self.error(e))?;
        let mut tx = self.begin().await.map_err(|e| self.error(e))?;
        // The first read takes the transaction's snapshot: the head, and what it sees unsequenced.
        let (epoch, head): (String, i64) = sqlx::query_as("select epoch::text, head from livegate.stream")
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| self.error(e))?;
        let epoch = Uuid::parse_str(&epoch).map_err(|e| SnapshotError::Unavailable(e.to_string()))?;
        let unsequenced: Vec<i64> = sqlx::query_scalar("select id from livegate.changes where pos is null")
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| self.error(e))?;
        let mut objects = Vec::new();
        for (schema, table, info) in &tables {
            let narrowed = narrowing(where_, info);
            let sql = format!(
                "select to_jsonb(t) as row from {}.{} t where {}",
                quote_ident(schema),
                quote_ident(table),
                narrowed.sql
            );
            let mut query = sqlx::query(&sql);
            for param in &narrowed.params {
                query = query.bind(param);
            }
            let mut rows = query.fetch(&mut *tx);
            while let Some(row) = rows.try_next().await.map_err(|e| self.error(e))? {
                let Value::Object(row) = row.try_get::<Value, _>("row").map_err(|e| self.error(e))? else { continue };
                let image = to_parse_object(info, row);
                let change = Change {
                    pos: head,
                    class: info.class.clone(),
                    kind: ChangeKind::Insert,
                    old: None,
                    new: Some(image),
                    captured_us: 0,
                };
                if let Some(object) = encode(&change) {
                    if objects.len() >= limit {
                        return Err(SnapshotError::TooManyRows { limit });
                    }
                    objects.push(object);
                }
            }
        }
        drop(tx);
        let skip = self.sequenced(&unsequenced).await?;
        Ok(SnapshotRead { epoch, head, skip, objects })
    }

    /// A repeatable-read, read-only transaction under the statement timeout; its snapshot is
    /// taken by its first read.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("set transaction isolation level repeatable read, read only").execute(&mut *tx).await?;
        let timeout = format!("set local statement_timeout = {}", self.timeout.as_millis().max(1));
        sqlx::query(&timeout).execute(&mut *tx).await?;
        Ok(tx)
    }

    /// The positions `changes` (ids) were given, once every one has one.
    async fn sequenced(&self, changes: &[i64]) -> Result<Vec<i64>, SnapshotError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let started = tokio::time::Instant::now();
        loop {
            let positions: Vec<Option<i64>> = sqlx::query_scalar("select pos from livegate.changes where id = any($1)")
                .bind(changes)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.error(e))?;
            // A change gone meanwhile was pruned after being sequenced (or history was reset,
            // which the resume notices by its epoch).
            if positions.iter().all(Option::is_some) {
                let mut skip: Vec<i64> = positions.into_iter().flatten().collect();
                skip.sort_unstable();
                return Ok(skip);
            }
            if started.elapsed() > SEQUENCING_WAIT {
                return Err(SnapshotError::Unavailable(
                    "changes are not being sequenced (is the feed running?)".into(),
                ));
            }
            tokio::time::sleep(SEQUENCING_POLL).await;
        }
    }

    fn error(&self, e: sqlx::Error) -> SnapshotError {
        match &e {
            // 57014: query_canceled, which is what statement_timeout raises.
            sqlx::Error::Database(db) if db.code().as_deref() == Some("57014") => {
                SnapshotError::Timeout { limit_ms: self.timeout.as_millis() as u64 }
            }
            sqlx::Error::Database(db) => SnapshotError::Unavailable(db.message().to_string()),
            other => SnapshotError::Unavailable(other.to_string()),
        }
    }
}

impl SnapshotSource for Snapshots {
    fn read<'a>(
        &'a self,
        class: &'a str,
        where_: &'a Map<String, Value>,
        encode: Encode<'a>,
        limit: usize,
    ) -> BoxFuture<'a, Result<SnapshotRead, SnapshotError>> {
        Box::pin(self.take(class, where_, encode, limit))
    }
}

/// `"name"`, with quotes doubled.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A `WHERE` clause over table alias `t` that every row matching the `where` satisfies, and its
/// parameters (as text, cast in SQL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Narrowing {
    pub sql: String,
    pub params: Vec<String>,
}

/// What kind of JSON scalar a column holds, for the translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColumnKind {
    Text,
    Integer,
    Float,
    Numeric,
    Boolean,
}

fn column_kind(type_name: &str) -> Option<ColumnKind> {
    Some(match type_name {
        "text" | "varchar" | "bpchar" | "name" | "citext" => ColumnKind::Text,
        "int2" | "int4" | "int8" => ColumnKind::Integer,
        "float4" | "float8" => ColumnKind::Float,
        "numeric" => ColumnKind::Numeric,
        "bool" => ColumnKind::Boolean,
        _ => return None,
    })
}

/// The top-level conditions of `where_` that SQL can evaluate exactly as a superset.
pub fn narrowing(where_: &Map<String, Value>, info: &TableInfo) -> Narrowing {
    let mut narrowing = Narrowing { sql: String::new(), params: Vec::new() };
    let mut terms = Vec::new();
    for (field, condition) in where_ {
        let column = match field.as_str() {
            "objectId" if info.primary_key.len() == 1 => info.primary_key[0].as_str(),
            f if f.starts_with('$') || f.starts_with('_') || f == "objectId" => continue,
            f if info.date_columns.contains(f) || !info.columns.contains(f) => continue,
            f => f,
        };
        let Some(kind) = info.column_types.get(column).and_then(|t| column_kind(t)) else { continue };
        let column_sql = format!("t.{}", quote_ident(column));
        // objectId is the key printed as text: compare it as text unless both are integers.
        let kind = if field == "objectId" && kind != ColumnKind::Integer { ColumnKind::Text } else { kind };
        let objectid_integer = field == "objectId" && kind == ColumnKind::Integer;
        let term = |op: &str, value: &Value, narrowing: &mut Narrowing| -> Option<String> {
            let value =
                if objectid_integer { Value::from(value.as_str()?.parse::<i64>().ok()?) } else { value.clone() };
            let (text, cast) = literal(kind, &value, op == "=")?;
            narrowing.params.push(text);
            Some(format!("{column_sql} {op} ${}::text::{cast}", narrowing.params.len()))
        };
        match condition {
            Value::Object(ops) if ops.keys().any(|k| k.starts_with('$')) => {
                for (op, operand) in ops {
                    let sql_op = match op.as_str() {
                        "$eq" => "=",
                        "$gt" if kind != ColumnKind::Text && kind != ColumnKind::Boolean => ">",
                        "$gte" if kind != ColumnKind::Text && kind != ColumnKind::Boolean => ">=",
                        "$lt" if kind != ColumnKind::Text && kind != ColumnKind::Boolean => "<",
                        "$lte" if kind != ColumnKind::Text && kind != ColumnKind::Boolean => "<=",
                        "$in" => {
                            if let Some(any) = in_list(operand, &mut |v, n| term("=", v, n), &mut narrowing) {
                                terms.push(any);
                            }
                            continue;
                        }
                        _ => continue,
                    };
                    if let Some(t) = term(sql_op, operand, &mut narrowing) {
                        terms.push(t);
                    }
                }
            }
            scalar => {
                if let Some(t) = term("=", scalar, &mut narrowing) {
                    terms.push(t);
                }
            }
        }
    }
    narrowing.sql = if terms.is_empty() { "true".into() } else { terms.join(" and ") };
    narrowing
}

/// `(a or b or …)` for an `$in` whose every item translates; `None` otherwise (an item SQL
/// cannot judge might match in memory). An empty list matches nothing.
fn in_list(
    operand: &Value,
    term: &mut dyn FnMut(&Value, &mut Narrowing) -> Option<String>,
    narrowing: &mut Narrowing,
) -> Option<String> {
    let items = operand.as_array()?;
    if items.is_empty() {
        return Some("false".into());
    }
    let before = narrowing.params.len();
    let mut alternatives = Vec::with_capacity(items.len());
    for item in items {
        match term(item, narrowing) {
            Some(t) => alternatives.push(t),
            None => {
                narrowing.params.truncate(before);
                return None;
            }
        }
    }
    Some(format!("({})", alternatives.join(" or ")))
}

/// The text of a JSON scalar and the SQL type to cast it to, when a column of `kind` compares
/// with it as the matcher does; `None` when SQL cannot judge it (left to the matcher).
fn literal(kind: ColumnKind, value: &Value, equality: bool) -> Option<(String, &'static str)> {
    match (kind, value) {
        (ColumnKind::Text, Value::String(s)) if equality => Some((s.clone(), "text")),
        (ColumnKind::Boolean, Value::Bool(b)) if equality => Some((b.to_string(), "bool")),
        (ColumnKind::Integer, Value::Number(n)) => match n.as_i64() {
            Some(i) => Some((i.to_string(), "int8")),
            None => n.as_f64().filter(|f| f.is_finite()).map(|f| (f.to_string(), "float8")),
        },
        (ColumnKind::Float, Value::Number(n)) => {
            n.as_f64().filter(|f| f.is_finite()).map(|f| (f.to_string(), "float8"))
        }
        (ColumnKind::Numeric, Value::Number(n)) => Some((n.to_string(), "numeric")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use serde_json::json;

    use super::*;

    fn info() -> TableInfo {
        let types =
            [("id", "int8"), ("room", "text"), ("n", "int4"), ("done", "bool"), ("score", "float8"), ("tags", "_text")];
        TableInfo {
            class: "messages".into(),
            primary_key: vec!["id".into()],
            date_columns: HashSet::from(["due".to_string()]),
            columns: types.iter().map(|(c, _)| c.to_string()).chain(["due".to_string()]).collect(),
            column_types: types.iter().map(|(c, t)| (c.to_string(), t.to_string())).collect::<HashMap<_, _>>(),
        }
    }

    fn narrowed(where_: Value) -> (String, Vec<String>) {
        let n = narrowing(where_.as_object().unwrap(), &info());
        (n.sql, n.params)
    }

    #[test]
    fn equality_ranges_and_in_lists_become_sql() {
        assert_eq!(narrowed(json!({"room": "a"})), ("t.\"room\" = $1::text::text".into(), vec!["a".into()]));
        let (sql, params) = narrowed(json!({"n": {"$gte": 3, "$lt": 10}, "done": true}));
        assert_eq!(sql, "t.\"n\" >= $1::text::int8 and t.\"n\" < $2::text::int8 and t.\"done\" = $3::text::bool");
        assert_eq!(params, vec!["3", "10", "true"]);
        let (sql, params) = narrowed(json!({"room": {"$in": ["a", "b"]}}));
        assert_eq!((sql.as_str(), params.len()), ("(t.\"room\" = $1::text::text or t.\"room\" = $2::text::text)", 2));
        assert_eq!(narrowed(json!({"room": {"$in": []}})).0, "false");
        assert_eq!(narrowed(json!({"objectId": "42"})), ("t.\"id\" = $1::text::int8".into(), vec!["42".into()]));
        assert_eq!(narrowed(json!({"score": {"$gt": 1.5}})).1, vec!["1.5"]);
    }

    #[test]
    fn what_sql_cannot_judge_is_left_to_the_matcher() {
        for where_ in [
            json!({}),
            json!({"room": 5}),
            json!({"room": {"$gt": "a"}}),
            json!({"room": {"$regex": "^a"}}),
            json!({"n": "3"}),
            json!({"room": {"$in": ["a", 1]}}),
            json!({"due": "2026-01-01"}),
            json!({"tags": "x"}),
            json!({"missing": 1}),
            json!({"$or": [{"room": "a"}]}),
            json!({"room": {"$ne": "a"}}),
            json!({"room": null}),
        ] {
            assert_eq!(narrowed(where_.clone()), ("true".into(), vec![]), "{where_}");
        }
        assert_eq!(narrowed(json!({"objectId": "abc"})).0, "true", "not an integer key: the matcher decides");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}
