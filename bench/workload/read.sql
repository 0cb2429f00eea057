\set id random(1, :maxid)
SELECT id, email, email_lower, balance FROM accounts WHERE id = :id;
