<?php
// The application entry point. Edit this file and rebuild: one layer changes.
$db = new PDO('mysql:host=127.0.0.1;dbname=app', 'app', getenv('DB_PASSWORD'));
echo "<h1>Hello from strata's LAMP example, version 1</h1>";
