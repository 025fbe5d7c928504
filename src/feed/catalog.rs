//! Table metadata (class name, primary key, date columns) from the PostgreSQL catalog, cached,
//! and the conversion of raw change rows into [`Change`]s.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Map, Value};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::Row;

use super::rows::{to_parse_object, TableInfo};
use crate::hub::{Change, ChangeKind};

/// Table metadata, loaded from the catalog on first sight and again when a row shows a column
/// the cached entry does not know (the table was altered).
pub struct Catalog {
    aliases: BTreeMap<String, String>,
    tables: HashMap<(String, String), Arc<TableInfo>>,
}

impl Catalog {
    pub fn new(aliases: BTreeMap<String, String>) -> Catalog {
        Catalog { aliases, tables: HashMap::new() }
    }

    pub(super) async fn info(
        &mut self,
        pool: &PgPool,
        schema: &str,
        table: &str,
        sample: Option<&Map<String, Value>>,
    ) -> Result<Arc<TableInfo>, sqlx::Error> {
        let key = (schema.to_string(), table.to_string());
        if let Some(info) = self.tables.get(&key) {
            let known = sample.is_none_or(|row| row.keys().all(|c| info.columns.contains(c)));
            if known {
                return Ok(info.clone());
            }
        }
        let mut info = self.load(pool, schema, table).await?;
        // Columns the catalog no longer has (dropped since the change was captured) must not
        // trigger a reload for every later row.
        info.columns.extend(sample.into_iter().flat_map(|row| row.keys().cloned()));
        let info = Arc::new(info);
        self.tables.insert(key, info.clone());
        Ok(info)
    }

    async fn load(&self, pool: &PgPool, schema: &str, table: &str) -> Result<TableInfo, sqlx::Error> {
        let rows = sqlx::query(
            "select a.attname::text as name, t.typname::text as type, \
                    array_position(i.indkey::int2[], a.attnum) as pk_order \
             from pg_attribute a \
             join pg_type t on t.oid = a.atttypid \
             left join pg_index i on i.indrelid = a.attrelid and i.indisprimary \
             where a.attrelid = to_regclass(quote_ident($1) || '.' || quote_ident($2)) \
               and a.attnum > 0 and not a.attisdropped \
             order by a.attnum",
        )
        .bind(schema)
        .bind(table)
        .fetch_all(pool)
        .await?;
        let mut primary_key: Vec<(i32, String)> = Vec::new();
        let mut date_columns = HashSet::new();
        let mut columns = HashSet::new();
        let mut column_types = HashMap::new();
        for row in rows {
            let name: String = row.try_get("name")?;
            let ty: String = row.try_get("type")?;
            if let Some(order) = row.try_get::<Option<i32>, _>("pk_order")? {
                primary_key.push((order, name.clone()));
            }
            if matches!(ty.as_str(), "timestamp" | "timestamptz" | "date") {
                date_columns.insert(name.clone());
            }
            column_types.insert(name.clone(), ty);
            columns.insert(name);
        }
        primary_key.sort();
        let class = self
            .aliases
            .get(&format!("{schema}.{table}"))
            .or_else(|| if schema == "public" { self.aliases.get(table) } else { None })
            .cloned()
            .unwrap_or_else(|| table.to_string());
        Ok(TableInfo {
            class: class.into(),
            primary_key: primary_key.into_iter().map(|(_, n)| n).collect(),
            date_columns,
            columns,
            column_types,
        })
    }
}

/// The columns [`Catalog::change`] reads, in a change-table query.
pub const CHANGE_COLUMNS: &str = "pos, table_schema, table_name, op, old_row, new_row, \
     (extract(epoch from captured_at) * 1000000)::int8 as captured_us";

impl Catalog {
    /// Turns one change-table row (selected with `CHANGE_COLUMNS`) into a [`Change`].
    pub async fn change(&mut self, pool: &PgPool, row: &PgRow) -> Result<Change, sqlx::Error> {
        let pos: i64 = row.try_get("pos")?;
        let schema: String = row.try_get("table_schema")?;
        let table: String = row.try_get("table_name")?;
        let op: String = row.try_get("op")?;
        let old: Option<Value> = row.try_get("old_row")?;
        let new: Option<Value> = row.try_get("new_row")?;
        let captured_us: i64 = row.try_get("captured_us")?;
        let kind = match op.as_str() {
            "INSERT" => ChangeKind::Insert,
            "UPDATE" => ChangeKind::Update,
            _ => ChangeKind::Delete,
        };
        let (old, new) = (into_map(old), into_map(new));
        let info = self.info(pool, &schema, &table, old.as_ref().or(new.as_ref())).await?;
        Ok(Change {
            pos,
            class: info.class.clone(),
            kind,
            old: old.map(|row| to_parse_object(&info, row)),
            new: new.map(|row| to_parse_object(&info, row)),
            captured_us,
        })
    }
}

fn into_map(value: Option<Value>) -> Option<Map<String, Value>> {
    match value {
        Some(Value::Object(map)) => Some(map),
        _ => None,
    }
}
