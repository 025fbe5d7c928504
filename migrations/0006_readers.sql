-- Where each running gateway has read up to, so that one gateway's pruner never deletes
-- changes another (lagging, but alive) gateway has not read yet. A gateway records its position
-- every `history.prune_interval_ms`; positions not refreshed within
-- `history.reader_timeout_secs` (a gateway that is gone, or frozen for that long) no longer
-- hold pruning back.
create table livegate.readers (
    id uuid primary key,
    position bigint not null,
    seen_at timestamptz not null default now()
);
