-- depends: 0002_capture
-- The demo domain: a multi-branch pharmacy distributor. Every table has a
-- client-choosable uuid id, a version raised by pgtide.touch_v1 on every real
-- update, and created_at/updated_at. All of them are tracked.

CREATE TABLE branches (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    code       text NOT NULL UNIQUE CHECK (code ~ '^[A-Za-z0-9_-]{1,32}$'),
    name       text NOT NULL CHECK (btrim(name) <> ''),
    city       text,
    timezone   text NOT NULL DEFAULT 'UTC',
    version    integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER branches_touch BEFORE UPDATE ON branches
    FOR EACH ROW EXECUTE FUNCTION pgtide.touch_v1();

CREATE TABLE clients (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    branch_id  uuid NOT NULL REFERENCES branches (id),
    full_name  text NOT NULL CHECK (btrim(full_name) <> ''),
    email      text CHECK (email ~ '^[^@[:space:]]+@[^@[:space:]]+$'),
    phone      text CHECK (phone ~ '^[+]?[0-9 ()-]{5,20}$'),
    notes      text,
    version    integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX clients_branch_idx ON clients (branch_id);
CREATE TRIGGER clients_touch BEFORE UPDATE ON clients
    FOR EACH ROW EXECUTE FUNCTION pgtide.touch_v1();

CREATE TABLE appointments (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    branch_id  uuid NOT NULL REFERENCES branches (id),
    client_id  uuid NOT NULL REFERENCES clients (id),
    starts_at  timestamptz NOT NULL,
    duration_minutes integer NOT NULL DEFAULT 30 CHECK (duration_minutes > 0 AND duration_minutes <= 1440),
    status     text NOT NULL DEFAULT 'scheduled'
               CHECK (status IN ('scheduled', 'confirmed', 'completed', 'cancelled', 'no_show')),
    notes      text,
    version    integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX appointments_branch_idx ON appointments (branch_id);
CREATE TRIGGER appointments_touch BEFORE UPDATE ON appointments
    FOR EACH ROW EXECUTE FUNCTION pgtide.touch_v1();

CREATE TABLE products (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    branch_id  uuid NOT NULL REFERENCES branches (id),
    sku        text NOT NULL CHECK (btrim(sku) <> ''),
    name       text NOT NULL CHECK (btrim(name) <> ''),
    price      numeric(12, 2) NOT NULL CHECK (price >= 0),
    stock      integer NOT NULL DEFAULT 0 CHECK (stock >= 0),
    UNIQUE (branch_id, sku),
    version    integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX products_branch_idx ON products (branch_id);
CREATE TRIGGER products_touch BEFORE UPDATE ON products
    FOR EACH ROW EXECUTE FUNCTION pgtide.touch_v1();

CREATE TABLE orders (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    branch_id  uuid NOT NULL REFERENCES branches (id),
    client_id  uuid NOT NULL REFERENCES clients (id),
    status     text NOT NULL DEFAULT 'new'
               CHECK (status IN ('new', 'paid', 'packed', 'shipped', 'delivered', 'cancelled')),
    items      jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(items) = 'array'),
    total      numeric(12, 2) NOT NULL DEFAULT 0 CHECK (total >= 0),
    currency   text NOT NULL DEFAULT 'EUR' CHECK (currency ~ '^[A-Z]{3}$'),
    version    integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_branch_idx ON orders (branch_id);
CREATE TRIGGER orders_touch BEFORE UPDATE ON orders
    FOR EACH ROW EXECUTE FUNCTION pgtide.touch_v1();

CREATE TABLE distributors (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    branch_id  uuid NOT NULL REFERENCES branches (id),
    name       text NOT NULL CHECK (btrim(name) <> ''),
    contact_email text CHECK (contact_email ~ '^[^@[:space:]]+@[^@[:space:]]+$'),
    agreement  jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(agreement) = 'object'),
    version    integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX distributors_branch_idx ON distributors (branch_id);
CREATE TRIGGER distributors_touch BEFORE UPDATE ON distributors
    FOR EACH ROW EXECUTE FUNCTION pgtide.touch_v1();

CREATE TABLE stock_requests (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    branch_id  uuid NOT NULL REFERENCES branches (id),
    product_id uuid NOT NULL REFERENCES products (id),
    distributor_id uuid REFERENCES distributors (id),
    quantity   integer NOT NULL CHECK (quantity > 0),
    status     text NOT NULL DEFAULT 'requested'
               CHECK (status IN ('requested', 'approved', 'ordered', 'received', 'rejected', 'cancelled')),
    note       text,
    version    integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stock_requests_branch_idx ON stock_requests (branch_id);
CREATE TRIGGER stock_requests_touch BEFORE UPDATE ON stock_requests
    FOR EACH ROW EXECUTE FUNCTION pgtide.touch_v1();

CREATE INDEX appointments_client_idx ON appointments (client_id, starts_at);
CREATE INDEX orders_client_idx ON orders (client_id);
CREATE INDEX stock_requests_product_idx ON stock_requests (product_id);

DO $$
BEGIN
    PERFORM pgtide.track_v1('public.branches');
    PERFORM pgtide.track_v1('public.clients');
    PERFORM pgtide.track_v1('public.appointments');
    PERFORM pgtide.track_v1('public.products');
    PERFORM pgtide.track_v1('public.orders');
    PERFORM pgtide.track_v1('public.distributors');
    PERFORM pgtide.track_v1('public.stock_requests');
END
$$;
