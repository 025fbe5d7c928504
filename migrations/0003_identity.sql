-- livegate identity: opaque session tokens and role inheritance, read by src/auth/sessions.rs.
--
-- These are the default sources of `[sessions] query` and `[sessions] roles_query`; a deployment
-- whose identities live elsewhere (Parse Server's own tables, say) points those queries there and
-- leaves these tables empty.

create schema if not exists livegate;

-- One row per opaque session token. Deleting the row revokes the token (once the gateway's
-- cache entry for it has expired).
create table livegate.sessions (
    token text primary key,
    user_id text not null,
    -- Direct roles, without the "role:" prefix; inherited roles come from role_inheritance.
    roles text[] not null default '{}',
    -- Null: the session never expires.
    expires_at timestamptz,
    created_at timestamptz not null default now()
);
comment on table livegate.sessions is
    'Opaque session tokens: a row per token; deleting the row revokes it.';

-- "Members of `role` also hold `inherits`", transitively. In Parse terms: if role Admin's `roles`
-- relation contains Moderator, members of Moderator inherit Admin, so the row is
-- (role = Moderator, inherits = Admin).
create table livegate.role_inheritance (
    role text not null,
    inherits text not null,
    primary key (role, inherits)
);
comment on table livegate.role_inheritance is
    'Role inheritance edges: members of role also hold inherits (transitively).';
