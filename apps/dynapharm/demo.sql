-- The demo data set of `pgtide demo`: a pharmacy distributor with four branches.
-- Deterministic (setseed); loaded once, in one transaction, as actor 'demo-loader'.
SELECT set_config('pgtide.actor', 'demo-loader', true),
       set_config('pgtide.origin', 'pgtide-demo', true),
       setseed(0.42);

INSERT INTO branches (code, name, city, timezone) VALUES
    ('LIS', 'Lisbon Baixa', 'Lisbon', 'Europe/Lisbon'),
    ('OPO', 'Porto Ribeira', 'Porto', 'Europe/Lisbon'),
    ('MAD', 'Madrid Centro', 'Madrid', 'Europe/Madrid'),
    ('BER', 'Berlin Mitte', 'Berlin', 'Europe/Berlin');

INSERT INTO products (branch_id, sku, name, price, stock)
SELECT b.id, 'P-' || lpad(g::text, 3, '0'),
       (ARRAY['Paracetamol 500mg', 'Ibuprofen 400mg', 'Vitamin D3', 'Omega-3', 'Saline spray',
              'Antihistamine', 'Cough syrup', 'Plasters', 'Thermometer', 'Hand sanitiser'])[1 + g % 10]
         || ' #' || g,
       round((2 + random() * 38)::numeric, 2), (random() * 200)::int
  FROM branches b, generate_series(1, 30) g;

INSERT INTO distributors (branch_id, name, contact_email, agreement)
SELECT b.id, d.name || ' ' || b.code, lower(d.name) || '@' || lower(b.code) || '.example',
       jsonb_build_object('discount_pct', 3 + (random() * 9)::int, 'net_days', 30,
                          'renews', (current_date + (random() * 365)::int)::text)
  FROM branches b,
       (VALUES ('Medisupply'), ('Farmalink'), ('Pharmaroute')) AS d(name);

INSERT INTO clients (branch_id, full_name, email, phone)
SELECT b.id, f.first || ' ' || l.last,
       lower(f.first || '.' || l.last || g) || '@mail.example',
       '+351 9' || lpad((random() * 99999999)::int::text, 8, '0')
  FROM branches b, generate_series(1, 150) g,
       LATERAL (SELECT (ARRAY['Ana', 'Bruno', 'Carla', 'Diego', 'Eva', 'Filipe', 'Greta',
                              'Hugo', 'Ines', 'Jonas', 'Lena', 'Marco'])[1 + (g * 5) % 12]
                       AS first) f,
       LATERAL (SELECT (ARRAY['Silva', 'Santos', 'Garcia', 'Muller', 'Costa', 'Lopez',
                              'Schmidt', 'Ferreira', 'Martins', 'Weber'])[1 + (g * 7) % 10]
                       AS last) l;

INSERT INTO appointments (branch_id, client_id, starts_at, duration_minutes, status)
SELECT c.branch_id, c.id,
       date_trunc('hour', now()) + ((random() * 60 - 30)::int || ' days')::interval
         + ((9 + (random() * 8)::int) || ' hours')::interval,
       (ARRAY[15, 30, 45])[1 + (random() * 2)::int],
       (ARRAY['scheduled', 'confirmed', 'completed', 'cancelled', 'no_show'])[1 + (random() * 4)::int]
  FROM clients c, generate_series(1, 2);

INSERT INTO orders (branch_id, client_id, status, items, total)
SELECT o.branch_id, o.client_id, o.status, o.items,
       (SELECT coalesce(sum((i->>'qty')::int * (i->>'price')::numeric), 0)
          FROM jsonb_array_elements(o.items) i)
  FROM (SELECT c.branch_id, c.id AS client_id,
               (ARRAY['new', 'paid', 'packed', 'shipped', 'delivered', 'cancelled'])[1 + (random() * 5)::int] AS status,
               (SELECT jsonb_agg(jsonb_build_object('sku', p.sku, 'qty', 1 + (random() * 3)::int,
                                                    'price', p.price))
                  FROM (SELECT sku, price FROM products p
                         WHERE p.branch_id = c.branch_id ORDER BY random() LIMIT 1 + (random() * 3)::int) p
               ) AS items
          FROM clients c, generate_series(1, 2) g
         WHERE random() < 0.7) o;

INSERT INTO stock_requests (branch_id, product_id, distributor_id, quantity, status)
SELECT p.branch_id, p.id,
       (SELECT d.id FROM distributors d WHERE d.branch_id = p.branch_id ORDER BY random() LIMIT 1),
       5 * (1 + (random() * 20)::int),
       (ARRAY['requested', 'approved', 'ordered', 'received', 'rejected'])[1 + (random() * 4)::int]
  FROM products p
 WHERE random() < 0.6;
