-- A sequencer with nothing to sequence no longer takes the stream row's lock. Locking it
-- writes the row (and so flushes WAL at commit) even when no position is assigned, and every
-- gateway calls this on every doorbell and poll: with several gateways, idle calls queued on
-- the lock and slowed the writers. A change committed just after the check is sequenced by
-- the next call, which its own NOTIFY brings.
create or replace function livegate.sequence(max_rows integer) returns bigint
language plpgsql as $$
declare
    current_head bigint;
    assigned bigint;
begin
    if not exists (select 1 from livegate.changes where pos is null) then
        return (select head from livegate.stream);
    end if;
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
