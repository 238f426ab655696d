<?php
define( 'DB_NAME', 'only_name' );
define( 'DB_HOST', '[::1]:3306' );
