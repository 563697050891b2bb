-- What each priced call produced at the vendor, per key: later calls on the object
-- (confirm, capture, refund, an update of amount or currency) are priced from it.
-- Written only by priced calls, read only for the same key: an id seen in some other
-- response never makes a call free.
CREATE TABLE priced_objects (
  key_id          TEXT NOT NULL REFERENCES vault_keys (id),
  object_id       TEXT NOT NULL,             -- pi_…, ch_…
  kind            TEXT NOT NULL,             -- payment_intent | charge
  amount          INTEGER NOT NULL,          -- in the currency's smallest unit
  currency        TEXT NOT NULL,             -- lowercase ISO 4217
  counted_micros  INTEGER NOT NULL,          -- USD micros this key was charged for it so far
  updated_at      INTEGER NOT NULL,
  PRIMARY KEY (key_id, object_id)
) WITHOUT ROWID;

-- Provenance now lives above; this random-key index cost a B-tree write in every settling transaction.
DROP INDEX IF EXISTS audit_object;

-- Connected accounts a key may act on with Stripe-Account (JSON array; NULL: none).
ALTER TABLE vault_keys ADD COLUMN stripe_accounts TEXT;
