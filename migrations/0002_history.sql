-- livegate history: retention, the resumable floor, and the epoch that changes when history is lost.
--
-- A client resumes from position p only when every change after p is still here: p >= floor
-- (positions <= floor were pruned) and p <= head, in the current epoch. The epoch changes
-- whenever history is lost in a way positions cannot express: the change table or a watched
-- table is truncated, or the database comes back as a different one (restored from a dump,
-- promoted on a new timeline). A position carries its epoch, so a stale one is never trusted.

alter table livegate.stream
    add column floor bigint not null default 0,
    -- Where this database is (oid, cluster id, timeline); a different answer means a restore.
    add column origin text;
update livegate.stream set floor = head;

-- Starts a new epoch: everything before the head is forgotten.
create function livegate.new_epoch() returns void
language sql security definer set search_path = pg_catalog, livegate as $$
    update livegate.stream set epoch = gen_random_uuid(), floor = head;
$$;

create function livegate.history_lost() returns trigger
language plpgsql security definer set search_path = pg_catalog, livegate as $$
begin
    perform livegate.new_epoch();
    perform pg_notify('livegate', '');
    return null;
end
$$;

create trigger livegate_history_lost after truncate on livegate.changes
    for each statement execute function livegate.history_lost();

-- This database's identity as far as a backup can tell: its oid changes when a dump is restored
-- into a new database, the cluster id when restored into another cluster, the timeline after a
-- point-in-time recovery. The cluster functions need pg_monitor; without it the oid still counts.
create function livegate.current_origin() returns text
language plpgsql security definer set search_path = pg_catalog, livegate as $$
declare
    cluster text := '';
begin
    begin
        select s.system_identifier::text || '/' || c.timeline_id::text into cluster
        from pg_control_system() s, pg_control_checkpoint() c;
    exception when insufficient_privilege then
        cluster := '';
    end;
    return (select oid::text from pg_database where datname = current_database()) || '/' || cluster;
end
$$;

-- Called by the gateway at start-up and after reconnecting: a new epoch when the database is not
-- the one the history was written in. Returns the stream row.
create function livegate.check_origin(out epoch uuid, out head bigint, out floor bigint)
language plpgsql security definer set search_path = pg_catalog, livegate as $$
declare
    here text := livegate.current_origin();
    recorded text;
begin
    select s.origin into recorded from livegate.stream s for update;
    if recorded is distinct from here then
        if recorded is not null then
            perform livegate.new_epoch();
        end if;
        update livegate.stream set origin = here;
    end if;
    select s.epoch, s.head, s.floor into epoch, head, floor from livegate.stream s;
end
$$;

-- Sequences committed changes (see livegate.sequence) and returns the stream row.
create function livegate.advance(max_rows integer, out epoch uuid, out head bigint, out floor bigint)
language plpgsql as $$
begin
    perform livegate.sequence(max_rows);
    select s.epoch, s.head, s.floor into epoch, head, floor from livegate.stream s;
end
$$;

-- Deletes the oldest sequenced changes that fall outside retention, at most max_rows of them,
-- and moves the floor past them. A change is outside retention when it was captured before
-- now() - max_age (a null max_age keeps everything by age) or when more than keep changes
-- follow it (a null keep keeps everything by count); pruning stops at the first change that
-- is inside both limits, so the retained history never has holes. Nothing after `upto` (what the
-- calling gateway has published) is pruned, so a lagging gateway never skips unseen changes.
-- Returns the rows deleted.
create function livegate.prune(max_age interval, keep bigint, max_rows integer, upto bigint) returns bigint
language plpgsql as $$
declare
    stream_row livegate.stream%rowtype;
    new_floor bigint;
    deleted bigint;
begin
    select * into stream_row from livegate.stream for update;
    with window_rows as (
        select c.pos, c.captured_at
        from livegate.changes c
        where c.pos > stream_row.floor and c.pos <= least(stream_row.head, upto)
        order by c.pos
        limit max_rows
    ), first_kept as (
        select min(w.pos) as pos
        from window_rows w
        where (max_age is null or w.captured_at >= now() - max_age)
          and (keep is null or w.pos > stream_row.head - keep)
    )
    select coalesce(max(w.pos), stream_row.floor) into new_floor
    from window_rows w
    where w.pos < coalesce((select pos from first_kept), 9223372036854775807);
    if new_floor <= stream_row.floor then
        return 0;
    end if;
    delete from livegate.changes c where c.pos > stream_row.floor and c.pos <= new_floor;
    get diagnostics deleted = row_count;
    update livegate.stream set floor = new_floor;
    return deleted;
end
$$;

-- Watching now also turns a TRUNCATE of the table into a new epoch: its rows vanish without
-- row events, so every client's view is stale and must be refetched.
create or replace function livegate.watch(target regclass) returns void
language plpgsql as $$
begin
    if not exists (select 1 from pg_index where indrelid = target and indisprimary) then
        raise exception 'livegate.watch: table % has no primary key (it becomes the objectId)', target
            using errcode = 'invalid_table_definition';
    end if;
    execute format('drop trigger if exists livegate_capture on %s', target);
    execute format(
        'create trigger livegate_capture after insert or update or delete on %s '
        'for each row execute function livegate.capture()', target);
    execute format('drop trigger if exists livegate_truncate on %s', target);
    execute format(
        'create trigger livegate_truncate after truncate on %s '
        'for each statement execute function livegate.history_lost()', target);
    insert into livegate.watched (relid) values (target) on conflict do nothing;
end
$$;

create or replace function livegate.unwatch(target regclass) returns void
language plpgsql as $$
begin
    execute format('drop trigger if exists livegate_capture on %s', target);
    execute format('drop trigger if exists livegate_truncate on %s', target);
    delete from livegate.watched where relid = target;
end
$$;

-- Tables watched before this migration get their truncate trigger.
select livegate.watch(relid) from livegate.watched;
