-- livegate capture: the change table, the trigger that fills it, and watch/unwatch.
--
-- Writers append row images to livegate.changes in their own transaction; the row gets a
-- capture id (in statement order) but no stream position yet. The gateway assigns positions
-- with livegate.sequence(), which only ever sees committed rows, so positions follow commit
-- order: a reader that has seen position p never later finds a committed change below p,
-- however many writers run concurrently. Writers never wait on each other or on the gateway.

create schema if not exists livegate;

-- One row: the stream's epoch (changes when history is lost) and its last assigned position.
create table livegate.stream (
    singleton boolean primary key default true check (singleton),
    epoch uuid not null default gen_random_uuid(),
    head bigint not null default 0
);
insert into livegate.stream default values;

create table livegate.changes (
    id bigint generated always as identity primary key,
    pos bigint unique,
    table_schema text not null,
    table_name text not null,
    op text not null check (op in ('INSERT', 'UPDATE', 'DELETE')),
    old_row jsonb,
    new_row jsonb,
    captured_at timestamptz not null default clock_timestamp()
);
create index changes_unsequenced on livegate.changes (id) where pos is null;

-- Tables under watch, and the primary key livegate uses as objectId.
create table livegate.watched (
    relid regclass primary key,
    watched_at timestamptz not null default now()
);

create function livegate.capture() returns trigger
language plpgsql security definer set search_path = pg_catalog, livegate as $$
begin
    insert into livegate.changes (table_schema, table_name, op, old_row, new_row)
    values (
        tg_table_schema,
        tg_table_name,
        tg_op,
        case when tg_op <> 'INSERT' then to_jsonb(old) end,
        case when tg_op <> 'DELETE' then to_jsonb(new) end
    );
    -- The doorbell. Identical notifications within one transaction are folded into one by
    -- PostgreSQL, so this rings at most once per transaction, and carries no row data.
    perform pg_notify('livegate', '');
    return null;
end
$$;

-- Assigns stream positions to committed, unsequenced changes in capture order and returns
-- the new head. Sequencers (one per gateway) serialise on the stream row; writers never do.
create function livegate.sequence(max_rows integer) returns bigint
language plpgsql as $$
declare
    current_head bigint;
    assigned bigint;
begin
    select head into current_head from livegate.stream for update;
    with todo as (
        select id, row_number() over (order by id) as n
        from livegate.changes
        where pos is null
        order by id
        limit max_rows
    )
    update livegate.changes c set pos = current_head + todo.n from todo where c.id = todo.id;
    get diagnostics assigned = row_count;
    if assigned > 0 then
        update livegate.stream set head = current_head + assigned;
    end if;
    return current_head + assigned;
end
$$;

create function livegate.watch(target regclass) returns void
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
    insert into livegate.watched (relid) values (target) on conflict do nothing;
end
$$;

create function livegate.unwatch(target regclass) returns void
language plpgsql as $$
begin
    execute format('drop trigger if exists livegate_capture on %s', target);
    delete from livegate.watched where relid = target;
end
$$;
