-- One sequencer at a time, and the others do not wait for it. With several gateways every
-- notification wakes all of them; they used to queue on the stream row's lock, each then
-- committing (and flushing WAL) for nothing. Now a sequencer that finds the row locked skips:
-- the one holding it is sequencing the same changes, and rings the doorbell when it commits,
-- so every gateway then reads them.
create or replace function livegate.sequence(max_rows integer) returns bigint
language plpgsql as $$
declare
    current_head bigint;
    assigned bigint;
begin
    if not exists (select 1 from livegate.changes where pos is null) then
        return (select head from livegate.stream);
    end if;
    select head into current_head from livegate.stream for update skip locked;
    if not found then
        return (select head from livegate.stream);
    end if;
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
        -- The gateways that skipped read what was sequenced once this commits.
        perform pg_notify('livegate', '');
    end if;
    return current_head + assigned;
end
$$;
