"""The store's schema, as an append-only list of migrations (index + 1 = PRAGMA user_version).

Never edit a migration that has shipped; append a new one.

Tables and who owns them:
- jobs, faxes: email to fax (store/jobs.py, store/faxes.py; their rows in store/records.py).
  One job per accepted message, one fax per recipient.
- events: carrier webhooks, deduplicated on (carrier_id, status) (store/events.py).
- inbound: faxes the carrier announced to us, until mailed (store/inbound.py).
- outbox: every mail the gateway sends, keyed so each goes out once (store/outbox.py).
- meta: small named values such as the reconciler's last seen inbound fax (store/meta.py).
- attempts: the journal of a job's deferred tries, for the timeline (store/attempts.py).
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: the first schema.
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL,  -- received prepared uploaded submitted done failed held
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        sender TEXT NOT NULL,           -- envelope MAIL FROM, lower-cased
        auth_user TEXT,
        client_address TEXT,
        subject TEXT NOT NULL DEFAULT '',
        message_id TEXT NOT NULL DEFAULT '',
        from_number TEXT NOT NULL,      -- E.164 the faxes go out from
        spool_path TEXT NOT NULL,       -- the raw message as received
        document_path TEXT,             -- assembled document, once prepared
        document_type TEXT,             -- MIME type of the document
        pages INTEGER,
        storage_key TEXT,               -- object key (s3) or file token (local)
        document_url TEXT,              -- the URL the carrier fetches; unique per job
        url_expires_at REAL,
        attempts INTEGER NOT NULL DEFAULT 0,   -- tries of the current stage
        pickups INTEGER NOT NULL DEFAULT 0,    -- pickups not (yet) finished: crash counter
        next_attempt_at REAL NOT NULL DEFAULT 0,
        error TEXT,                     -- last error, shown to people
        stored_deleted_at REAL          -- when the stored document was removed
    );
    CREATE INDEX jobs_state ON jobs(state, next_attempt_at);
    CREATE INDEX jobs_sender ON jobs(sender, created_at);

    CREATE TABLE faxes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL REFERENCES jobs(id),
        recipient TEXT NOT NULL,        -- E.164 with '+'
        state TEXT NOT NULL,            -- pending, submitted, delivered, failed, held, cancelled
        carrier_id TEXT UNIQUE,
        carrier_status TEXT,
        error_code INTEGER,
        error_description TEXT,
        pages INTEGER,
        duration INTEGER,
        carrier_attempts INTEGER,
        submit_attempts INTEGER NOT NULL DEFAULT 0,  -- POSTs started (a crash may hide one)
        pickups INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        submitted_at REAL,
        finished_at REAL,
        UNIQUE (job_id, recipient)
    );
    CREATE INDEX faxes_state ON faxes(state, next_attempt_at);

    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        carrier_id TEXT NOT NULL,
        status TEXT NOT NULL,
        direction TEXT NOT NULL,
        payload TEXT NOT NULL,          -- JSON as received (after verification, the carrier's)
        received_at REAL NOT NULL,
        processed_at REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        UNIQUE (carrier_id, status)
    );
    CREATE INDEX events_pending ON events(processed_at);

    CREATE TABLE inbound (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        carrier_id TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL,            -- announced, stored, mailed, dead
        from_number TEXT NOT NULL,
        to_number TEXT NOT NULL,
        pages INTEGER,
        duration INTEGER,
        fax_time TEXT,
        media_url TEXT,
        file_path TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        error TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX inbound_state ON inbound(state, next_attempt_at);

    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL UNIQUE,  -- idempotency, e.g. report:<fax id>:delivered
        kind TEXT NOT NULL,             -- delivered, failed, queued, received
        state TEXT NOT NULL,            -- pending, sent, failed, dead
        recipients TEXT NOT NULL,       -- JSON list
        message_path TEXT NOT NULL,     -- the rendered message (.eml) on disk
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        error TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        sent_at REAL
    );
    CREATE INDEX outbox_state ON outbox(state, next_attempt_at);

    CREATE TABLE meta (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )
    """,
    # 2: faxes remember when their outcome was handed to the reporter (so a report is never
    # lost between a state change and queueing its mail, and no document is cleaned before),
    # and when the current round of POSTs began (the window a restart searches the carrier's
    # list in for a fax a crash may have hidden, which after a retry excludes older faxes).
    # The partial indexes keep the reporter's and the cleaner's scans off the long history.
    """
    ALTER TABLE faxes ADD COLUMN reported_at REAL;
    ALTER TABLE faxes ADD COLUMN submit_started_at REAL;
    CREATE INDEX faxes_unreported ON faxes(state) WHERE reported_at IS NULL;
    CREATE INDEX jobs_uncleaned ON jobs(state) WHERE stored_deleted_at IS NULL
    """,
    # 3: the document URL the latest POST of a fax sent. A restart looks for that POST at the
    # carrier by this URL; the job's URL may have been signed afresh since (for a sibling fax,
    # or because it neared expiry), and searching by the new one would miss the fax and send
    # it twice.
    """
    ALTER TABLE faxes ADD COLUMN submit_url TEXT
    """,
    # 4: the daily limit counts a login's faxes too, whatever senders it named.
    """
    CREATE INDEX jobs_auth_user ON jobs(auth_user, created_at) WHERE auth_user IS NOT NULL
    """,
    # 5: one queue discipline (gateway/queue/schedule.py) for every queue: a persisted due time
    # and crash guard for events, inbound faxes and outbox mail, and for each fax's report (the
    # report step's own attempts, pickups and due time beside the submit step's).
    """
    ALTER TABLE events ADD COLUMN pickups INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE events ADD COLUMN next_attempt_at REAL NOT NULL DEFAULT 0;
    CREATE INDEX events_due ON events(next_attempt_at) WHERE processed_at IS NULL;
    ALTER TABLE inbound ADD COLUMN pickups INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE outbox ADD COLUMN pickups INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE faxes ADD COLUMN report_attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE faxes ADD COLUMN report_pickups INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE faxes ADD COLUMN report_due_at REAL NOT NULL DEFAULT 0;
    ALTER TABLE faxes ADD COLUMN report_error TEXT
    """,
    # 6: a claim names its owner (the boot id of the process that made it), so a new boot takes
    # back its predecessor's claims at once instead of waiting out their leases.
    """
    ALTER TABLE jobs ADD COLUMN claimed_by TEXT;
    ALTER TABLE faxes ADD COLUMN claimed_by TEXT;
    ALTER TABLE faxes ADD COLUMN report_claimed_by TEXT;
    ALTER TABLE events ADD COLUMN claimed_by TEXT;
    ALTER TABLE inbound ADD COLUMN claimed_by TEXT;
    ALTER TABLE outbox ADD COLUMN claimed_by TEXT
    """,
    # 7: a client's retry of a message already queued (same sender, Message-ID, recipients) is
    # found by smtp.dedupe_window_seconds without a scan of the jobs.
    """
    CREATE INDEX jobs_message_id ON jobs(message_id, created_at) WHERE message_id != ''
    """,
    # 8: a job's stored copy (S3 or local storage, for the carrier) goes as soon as every fax
    # is final (stored_deleted_at), its local files (spool, assembled document) once the
    # outcomes are reported too (files_removed_at); until now one mark meant both. Rows cleaned
    # before keep meaning both. The daily purge finds old rows by their last change.
    """
    ALTER TABLE jobs ADD COLUMN files_removed_at REAL;
    UPDATE jobs SET files_removed_at = stored_deleted_at WHERE stored_deleted_at IS NOT NULL;
    CREATE INDEX jobs_files_kept ON jobs(state) WHERE files_removed_at IS NULL;
    CREATE INDEX jobs_updated ON jobs(updated_at);
    CREATE INDEX events_processed ON events(processed_at) WHERE processed_at IS NOT NULL;
    CREATE INDEX outbox_updated ON outbox(updated_at);
    CREATE INDEX inbound_updated ON inbound(updated_at)
    """,
    # 9: a message's own settings, from the options of its address (`+nocover`, `+fine`,
    # `+notify=none`) and its sender's [senders] entry; NULL = the configuration's. cover is
    # 0/1; resolution ("fine"/"standard") is only kept, as the carrier API takes none; notify
    # ("none"/"failure"/"all") overrides the notify.on_* switches for its reports.
    """
    ALTER TABLE jobs ADD COLUMN cover INTEGER;
    ALTER TABLE jobs ADD COLUMN cover_template TEXT;
    ALTER TABLE jobs ADD COLUMN resolution TEXT;
    ALTER TABLE jobs ADD COLUMN notify TEXT
    """,
    # 10 (resubmission, fax.resubmit_attempts): how many times a fax that failed on the line was
    # put back to pending to be sent again (its reports say how many times it was tried).
    """
    ALTER TABLE faxes ADD COLUMN resubmits INTEGER NOT NULL DEFAULT 0
    """,
    # 11: a claim's lease, for stores several nodes share (PostgreSQL): until `lease_until` the
    # node that claimed a row (claimed_by) has it, and other nodes leave it alone; after that
    # (the node died mid-step) any node may claim it again, its pickups still counted.
    """
    ALTER TABLE jobs ADD COLUMN lease_until REAL;
    ALTER TABLE faxes ADD COLUMN lease_until REAL;
    ALTER TABLE faxes ADD COLUMN report_lease_until REAL;
    ALTER TABLE events ADD COLUMN lease_until REAL;
    ALTER TABLE inbound ADD COLUMN lease_until REAL;
    ALTER TABLE outbox ADD COLUMN lease_until REAL
    """,
    # 12: when a job was prepared and uploaded, for the timeline of the status pages (set by
    # jobs.advance as the job enters each state; NULL for jobs from before).
    """
    ALTER TABLE jobs ADD COLUMN prepared_at REAL;
    ALTER TABLE jobs ADD COLUMN uploaded_at REAL
    """,
    # 13: operator retries (`fax-gateway queue retry`, the status page's Retry) of a failed or
    # held fax: each round's reports are mails of their own (their outbox keys name the round),
    # so a fax that fails again after a retry is reported again.
    """
    ALTER TABLE faxes ADD COLUMN rounds INTEGER NOT NULL DEFAULT 0
    """,
    # 14 (issue 13, shared durability): the shared copy of each data.dir file a row names, for
    # stores several nodes share (gateway/store/blobs.py): `name` is "<folder>/<file name>",
    # written in the transaction that makes the row. SQLite's stays empty (its files are the
    # truth, in data.dir).
    """
    CREATE TABLE blobs (
        name TEXT PRIMARY KEY,
        data BLOB NOT NULL,
        size INTEGER NOT NULL,
        created_at REAL NOT NULL
    )
    """,
    # 15: the journal of attempts (gateway/store/attempts.py): one row per deferred try of a
    # job's stage (prepare, upload, or a fax's POST: fax_id), with its reason, for the status
    # pages' timeline; a job keeps its latest 50, and they go with it at retention.
    """
    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL REFERENCES jobs(id),
        fax_id INTEGER,
        stage TEXT NOT NULL,
        reason TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX attempts_job ON attempts(job_id, id)
    """,
]
