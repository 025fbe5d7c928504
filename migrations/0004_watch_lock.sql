-- Gateways that start together each re-install the triggers of the tables they watch. Two
-- `drop trigger; create trigger` sequences on one table at once collide ("already exists", or a
-- deadlock on the lock upgrade), so watching and unwatching are serialised by a transaction
-- advisory lock; the second watcher then simply re-installs what the first did.
create or replace function livegate.watch(target regclass) returns void
language plpgsql as $$
begin
    perform pg_advisory_xact_lock(hashtext('livegate.watch'));
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
    perform pg_advisory_xact_lock(hashtext('livegate.watch'));
    execute format('drop trigger if exists livegate_capture on %s', target);
    execute format('drop trigger if exists livegate_truncate on %s', target);
    delete from livegate.watched where relid = target;
end
$$;
