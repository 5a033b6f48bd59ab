-- fleetup coordinator schema, version 1.
-- Times are unix milliseconds (bigint) and structured values are JSON text, on both
-- backends, so one set of queries serves SQLite and Postgres (docs/decisions.md).

create table api_tokens (
    id          text primary key,
    name        text not null,
    role        text not null check (role in ('viewer', 'operator', 'admin')),
    token_hash  text not null unique,
    created_at  bigint not null,
    revoked_at  bigint
);

-- Dashboard logins (issue 6 fills these).
create table users (
    id             text primary key,
    username       text not null unique,
    password_hash  text not null,
    role           text not null check (role in ('viewer', 'operator', 'admin')),
    created_at     bigint not null,
    disabled_at    bigint
);

create table sessions (
    id          text primary key,
    user_id     text not null references users (id),
    token_hash  text not null unique,
    csrf_token  text not null,
    created_at  bigint not null,
    expires_at  bigint not null
);

create table enrollment_tokens (
    id          text primary key,
    name        text not null,
    token_hash  text not null unique,
    labels      text not null,
    expires_at  bigint,
    max_uses    bigint,
    uses        bigint not null default 0,
    created_by  text not null,
    created_at  bigint not null,
    revoked_at  bigint
);

create table agents (
    id           text primary key,
    hostname     text not null,
    secret_hash  text not null unique,
    labels       text not null,
    facts        text not null,
    version      text not null,
    installed    text not null,
    enrolled_at  bigint not null,
    last_seen    bigint not null,
    revoked_at   bigint
);

create table packages (
    id           text primary key,
    name         text not null,
    version      text not null,
    sha256       text not null unique,
    size         bigint not null,
    key_id       text not null,
    manifest     text not null,
    uploaded_by  text not null,
    uploaded_at  bigint not null
);

create table rollouts (
    id                 text primary key,
    name               text not null,
    package_id         text not null references packages (id),
    state              text not null,
    state_reason       text,
    spec               text not null,
    current_wave       bigint not null default 0,
    approved_wave      bigint not null default 1,
    failures_accepted  bigint not null default 0,
    gate_override_wave bigint not null default 0,
    retry_of           text,
    created_by         text not null,
    created_at         bigint not null,
    started_at         bigint,
    finished_at        bigint
);

create table waves (
    rollout_id  text not null references rollouts (id),
    number      bigint not null,
    size        bigint not null,
    state       text not null,
    opened_at   bigint,
    done_at     bigint,
    primary key (rollout_id, number)
);

create table jobs (
    id                text primary key,
    rollout_id        text not null references rollouts (id),
    agent_id          text not null references agents (id),
    wave              bigint not null,
    position          bigint not null,
    state             text not null,
    fencing_token     bigint not null default 0,
    lease_ms          bigint not null,
    lease_expires_at  bigint,
    current_phase     text,
    phase_started_at  bigint,
    phases            text not null,
    warnings          text not null,
    outage_ms         bigint,
    error             text,
    restart_required  boolean not null default false,
    cancel_requested  boolean not null default false,
    created_at        bigint not null,
    dispatched_at     bigint,
    finished_at       bigint,
    updated_at        bigint not null
);
create index jobs_agent_state on jobs (agent_id, state);
create index jobs_rollout_wave on jobs (rollout_id, wave, state);
create index jobs_state_lease on jobs (state, lease_expires_at);

create table events (
    job_id   text not null references jobs (id),
    seq      bigint not null,
    phase    text not null,
    status   text not null,
    message  text not null,
    data     text not null,
    at       bigint not null,
    primary key (job_id, seq)
);

create table logs (
    job_id  text not null references jobs (id),
    seq     bigint not null,
    phase   text not null,
    line    text not null,
    at      bigint not null,
    primary key (job_id, seq)
);

create table decisions (
    job_id       text not null references jobs (id),
    id           bigint not null,
    phase        text not null,
    kind         text not null,
    request      text not null,
    answer       text,
    answered_by  text,
    asked_at     bigint not null,
    answered_at  bigint,
    primary key (job_id, id)
);

create table audit_log (
    id           text primary key,
    at           bigint not null,
    actor        text not null,
    action       text not null,
    object_type  text not null,
    object_id    text not null,
    detail       text not null
);
create index audit_log_at on audit_log (at);
