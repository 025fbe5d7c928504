//! The `$regex` patterns of one `where` being compiled, and the limits on them: how many are
//! written (`max_regexes`), the memory accounted for by the distinct compiled patterns the query
//! holds (`max_regex_memory_per_query`, whether or not other queries share them), and the memory
//! of all live patterns of the process once this query's new ones are compiled
//! (`max_regex_memory_total`: a pattern that is already live is shared and costs nothing new).

use std::sync::Arc;

use super::pattern::{Pattern, Table};
use super::{failure, QueryError, QueryLimits};

/// The patterns compiled so far for one `where`.
pub(super) struct Regexes {
    table: &'static Table,
    written: usize,
    distinct: Vec<Arc<Pattern>>,
    memory: usize,
}

impl Regexes {
    pub(super) fn new(table: &'static Table) -> Regexes {
        Regexes { table, written: 0, distinct: Vec::new(), memory: 0 }
    }

    /// One more `$regex` of `field`, the live pattern when there is one. Refused past
    /// `max_regexes`, and when compiling it takes the live total past `max_regex_memory_total`
    /// (checked at once, so a process over its budget stops compiling; the patterns compiled
    /// for a refused query are freed with it).
    pub(super) fn compile(
        &mut self,
        field: &str,
        pattern: &str,
        options: &str,
        limits: QueryLimits,
    ) -> Result<Arc<Pattern>, QueryError> {
        self.written += 1;
        if self.written > limits.max_regexes {
            return Err(QueryError(format!(
                "{field}.$regex: more than {} regular expressions in one query",
                limits.max_regexes
            )));
        }
        let shared = self.table.share(pattern, options, limits.max_regex_bytes).map_err(failure(field, "$regex"))?;
        if !self.distinct.iter().any(|held| Arc::ptr_eq(held, &shared.pattern)) {
            self.memory += shared.pattern.memory();
            self.distinct.push(Arc::clone(&shared.pattern));
        }
        let live = self.table.live_memory();
        if shared.compiled && live > limits.max_regex_memory_total {
            return Err(QueryError(format!(
                "compiled $regex patterns would take {} in all, more than limits.regex_memory_total ({}); try again later",
                size(live, true),
                size(limits.max_regex_memory_total, false)
            )));
        }
        Ok(shared.pattern)
    }

    /// The memory the query's distinct patterns account for, refused past
    /// `max_regex_memory_per_query`.
    pub(super) fn finish(self, limits: QueryLimits) -> Result<usize, QueryError> {
        if self.memory > limits.max_regex_memory_per_query {
            return Err(QueryError(format!(
                "$regex patterns of this query need {}, more than limits.regex_memory_per_query ({})",
                size(self.memory, true),
                size(limits.max_regex_memory_per_query, false)
            )));
        }
        Ok(self.memory)
    }
}

/// `bytes` in MiB (in KiB below 1 MiB) with at most one decimal, rounded up or down: a need
/// rounded up next to a limit rounded down never reads as equal to it.
pub(super) fn size(bytes: usize, round_up: bool) -> String {
    const KIB: u128 = 1 << 10;
    const MIB: u128 = 1 << 20;
    let bytes = bytes as u128;
    let (unit, name) = if bytes < MIB { (KIB, "KiB") } else { (MIB, "MiB") };
    let tenths = if round_up { (bytes * 10).div_ceil(unit) } else { bytes * 10 / unit };
    match tenths % 10 {
        0 => format!("{} {name}", tenths / 10),
        decimal => format!("{}.{decimal} {name}", tenths / 10),
    }
}
