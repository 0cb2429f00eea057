INSERT INTO accounts (id, email) VALUES (nextval('accounts_new_ids'), 'New' || currval('accounts_new_ids') || '@Example.COM');
