-- Payments: the rider's provider customer, their cards (provider ids and display fields
-- only, never a card number), and one charge per (trip, kind) with its refunds.

CREATE TABLE payment_customers (
    rider_id    text PRIMARY KEY REFERENCES riders (id),
    customer_id text NOT NULL UNIQUE           -- the provider's customer ("cus_...")
);

CREATE TABLE payment_methods (
    method_id  text        PRIMARY KEY,        -- the provider's payment method ("pm_...")
    rider_id   text        NOT NULL REFERENCES riders (id),
    brand      text        NOT NULL,
    last4      text        NOT NULL CHECK (last4 ~ '^[0-9]{4}$'),
    exp_month  smallint    NOT NULL,
    exp_year   smallint    NOT NULL,
    is_default boolean     NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_methods_by_rider_idx ON payment_methods (rider_id, created_at DESC);
-- At most one default per rider: the index, not a read before the write, decides.
CREATE UNIQUE INDEX payment_methods_one_default_idx ON payment_methods (rider_id) WHERE is_default;

-- status and kind hold rider.v1.PaymentStatus / PaymentKind numbers (rider/billing.py).
CREATE TABLE payments (
    id              text        PRIMARY KEY,
    trip_id         text        NOT NULL,
    rider_id        text        NOT NULL,
    kind            smallint    NOT NULL,
    status          smallint    NOT NULL,
    amount_minor    bigint      NOT NULL CHECK (amount_minor > 0),
    currency        text        NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,  -- attempt numbers sent to the provider
    failures        integer     NOT NULL DEFAULT 0,  -- declines since the last settle
    card_last4      text        NOT NULL DEFAULT '',
    failure         text        NOT NULL DEFAULT '',
    provider_ref    text        NOT NULL DEFAULT '', -- the provider's charge ("pi_...")
    refunded_minor  bigint      NOT NULL DEFAULT 0 CHECK (refunded_minor <= amount_minor),
    due_at          timestamptz NOT NULL DEFAULT now(), -- PENDING: next attempt; CHARGING: lease end
    version         bigint      NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT payments_one_per_trip_kind UNIQUE (trip_id, kind)
);
CREATE INDEX payments_due_idx ON payments (due_at) WHERE status IN (1, 2);
CREATE INDEX payments_by_rider_idx ON payments (rider_id, status);

-- A refund is written (and its amount counted in payments.refunded_minor, so two refunds
-- never add up to more than the charge) BEFORE the provider is asked; pending until the
-- provider's answer is committed, and looked up there by its id after a crash.
CREATE TABLE payment_refunds (
    id           text        PRIMARY KEY,
    payment_id   text        NOT NULL REFERENCES payments (id),
    amount_minor bigint      NOT NULL CHECK (amount_minor > 0),
    reason       text        NOT NULL DEFAULT '',
    pending      boolean     NOT NULL DEFAULT true,
    provider_ref text        NOT NULL DEFAULT '', -- the provider's refund ("re_...")
    due_at       timestamptz NOT NULL,            -- pending: when a worker may take it over
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_refunds_by_payment_idx ON payment_refunds (payment_id, created_at);
CREATE INDEX payment_refunds_pending_idx ON payment_refunds (due_at) WHERE pending;
